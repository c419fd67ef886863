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
	Auths       map[string]dockerAuth `json:"auths"`
	CredHelpers map[string]string     `json:"credHelpers"`
	CredsStore  string                `json:"credsStore"`
}

type dockerAuth struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
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
	if user, secret, found, err := lookupAuths(cfg.Auths, keys); found || err != nil {
		if err != nil {
			err = fmt.Errorf("docker config %s: %w", c.path, err)
		}
		return user, secret, err
	}
	if cfg.CredsStore != "" {
		return runHelper(cfg.CredsStore, keys[0])
	}
	return "", "", nil
}

// LookupDockerConfigJSON returns host's credentials from data, a docker
// config.json's content without credential helpers (a Kubernetes
// kubernetes.io/dockerconfigjson secret's .dockerconfigjson).
func LookupDockerConfigJSON(data []byte, host string) (user, secret string, found bool, err error) {
	var cfg dockerConfig
	if err := json.Unmarshal(data, &cfg); err != nil {
		return "", "", false, err
	}
	return lookupAuths(cfg.Auths, configKeys(host))
}

// lookupAuths finds the first of keys in auths. An identity token comes
// back as the secret with no username.
func lookupAuths(auths map[string]dockerAuth, keys []string) (user, secret string, found bool, err error) {
	for _, key := range keys {
		a, ok := auths[key]
		if !ok {
			continue
		}
		if a.IdentityToken != "" {
			return "", a.IdentityToken, true, nil
		}
		if a.Auth != "" {
			raw, err := base64.StdEncoding.DecodeString(a.Auth)
			if err != nil {
				return "", "", true, fmt.Errorf("auth for %s is not base64: %w", key, err)
			}
			user, pass, ok := strings.Cut(string(raw), ":")
			if !ok {
				return "", "", true, fmt.Errorf("auth for %s is not user:password", key)
			}
			return user, pass, true, nil
		}
		return a.Username, a.Password, true, nil
	}
	return "", "", false, nil
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
