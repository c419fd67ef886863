package remote

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Credentials reads registry credentials from a docker config.json:
// "auths" entries (auth or username/password, or an identity token), and
// credential helpers ("credHelpers", "credsStore").
type Credentials struct {
	path string
}

// NewCredentials reads dir/config.json (dir defaults as in Options).
func NewCredentials(dir string) *Credentials {
	dir = dockerConfigDir(dir)
	if dir == "" {
		return &Credentials{}
	}
	return &Credentials{path: filepath.Join(dir, "config.json")}
}

type dockerConfig struct {
	Auths map[string]struct {
		Auth          string `json:"auth"`
		Username      string `json:"username"`
		Password      string `json:"password"`
		IdentityToken string `json:"identitytoken"`
	} `json:"auths"`
	CredHelpers map[string]string `json:"credHelpers"`
	CredsStore  string            `json:"credsStore"`
}

// Lookup returns the username and secret for host; both empty when there
// are none. An identity token comes back as the secret with no username,
// which containerd's authorizer exchanges for a bearer token.
func (c *Credentials) Lookup(host string) (string, string, error) {
	if c.path == "" {
		return "", "", nil
	}
	data, err := os.ReadFile(c.path)
	if errors.Is(err, os.ErrNotExist) {
		return "", "", nil
	}
	if err != nil {
		return "", "", fmt.Errorf("read docker config: %w", err)
	}
	var cfg dockerConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return "", "", fmt.Errorf("docker config %s: %w", c.path, err)
	}
	keys := configKeys(host)
	for _, key := range keys {
		if helper := cfg.CredHelpers[key]; helper != "" {
			return runHelper(helper, key)
		}
	}
	for _, key := range keys {
		a, ok := cfg.Auths[key]
		if !ok {
			continue
		}
		if a.IdentityToken != "" {
			return "", a.IdentityToken, nil
		}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return "", "", fmt.Errorf("docker config %s: auth for %s is not base64: %w", c.path, key, err)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return "", "", fmt.Errorf("docker config %s: auth for %s is not user:password", c.path, key)
			}
			return user, pass, nil
		}
		return a.Username, a.Password, nil
	}
	if cfg.CredsStore != "" {
		return runHelper(cfg.CredsStore, keys[0])
	}
	return "", "", nil
}

// configKeys lists the keys docker config.json may file host under.
func configKeys(host string) []string {
	if host == "docker.io" || host == "registry-1.docker.io" || host == "index.docker.io" {
		return []string{"https://index.docker.io/v1/", "docker.io", "index.docker.io", "registry-1.docker.io"}
	}
	return []string{host, "https://" + host, "http://" + host}
}

// runHelper asks docker-credential-<helper> for host's credentials.
func runHelper(helper, host string) (string, string, error) {
	cmd := exec.Command("docker-credential-"+helper, "get")
	cmd.Stdin = strings.NewReader(host)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stdout.String() + stderr.String())
		if strings.Contains(msg, "credentials not found") {
			return "", "", nil
		}
		return "", "", fmt.Errorf("credential helper docker-credential-%s for %s: %w: %s", helper, host, err, msg)
	}
	var out struct{ Username, Secret string }
	if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
		return "", "", fmt.Errorf("credential helper docker-credential-%s: %w", helper, err)
	}
	if out.Username == "<token>" {
		return "", out.Secret, nil
	}
	return out.Username, out.Secret, nil
}
