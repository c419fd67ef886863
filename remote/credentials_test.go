package remote

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCredentials(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{
  "auths": {
    "reg.example:5000": {"auth": "YWxpY2U6czNjcmV0"},
    "https://index.docker.io/v1/": {"username": "bob", "password": "pw"},
    "tokens.example": {"identitytoken": "refresh-me"}
  },
  "credHelpers": {"helped.example": "lazypull-test-helper"}
}`), 0o600)
	bin := t.TempDir()
	os.WriteFile(filepath.Join(bin, "docker-credential-lazypull-test-helper"), []byte(`#!/bin/sh
read host
echo "{\"Username\":\"helper-user\",\"Secret\":\"for-$host\"}"
`), 0o755)
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))

	c := NewCredentials(dir)
	for host, want := range map[string][2]string{
		"reg.example:5000": {"alice", "s3cret"},
		"docker.io":        {"bob", "pw"},
		"tokens.example":   {"", "refresh-me"},
		"helped.example":   {"helper-user", "for-helped.example"},
		"unknown.example":  {"", ""},
	} {
		user, secret, err := c.Lookup(host)
		if err != nil || user != want[0] || secret != want[1] {
			t.Errorf("Lookup(%s) = %q, %q, %v; want %q, %q", host, user, secret, err, want[0], want[1])
		}
	}

	if u, s, err := NewCredentials(t.TempDir()).Lookup("x"); u != "" || s != "" || err != nil {
		t.Errorf("no config.json: %q %q %v", u, s, err)
	}
	bad := t.TempDir()
	os.WriteFile(filepath.Join(bad, "config.json"), []byte(`{"auths":{"x":{"auth":"!!"}}}`), 0o600)
	if _, _, err := NewCredentials(bad).Lookup("x"); err == nil {
		t.Errorf("a bad auth entry gave no error")
	}
}

// FuzzLookupDockerConfigJSON: a pull secret's content comes from whoever
// can write secrets in a cluster; whatever it holds, the lookup returns an
// error or credentials, never panics.
func FuzzLookupDockerConfigJSON(f *testing.F) {
	f.Add([]byte(`{"auths":{"r.example":{"auth":"dTpw"}}}`), "r.example")
	f.Add([]byte(`{"auths":{"https://index.docker.io/v1/":{"identitytoken":"t"}}}`), "docker.io")
	f.Add([]byte(`{"auths":{"r.example":{"auth":"bm9jb2xvbg=="}}}`), "r.example")
	f.Fuzz(func(t *testing.T, data []byte, host string) {
		user, secret, found, err := LookupDockerConfigJSON(data, host)
		if (err != nil || !found) && (user != "" || secret != "") {
			t.Errorf("credentials %q, %q with found=%v, err=%v", user, secret, found, err)
		}
	})
}
