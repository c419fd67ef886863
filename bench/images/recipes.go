package images

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
)

// recipeVersion is part of every image's cache key: bump it when the builder
// changes what it makes from a recipe, so that caches rebuild.
const recipeVersion = 2

// recipe says how one image's application layer is made and what its
// workload is. Its fields are its cache key, so it holds no functions.
type recipe struct {
	Name     string
	Packages []string          // apt-get install --no-install-recommends, in a chroot over the base
	Files    map[string][]byte // written into the application layer after the install (mode 0644)
	Cmd      []string
	Ready    string // the line Cmd prints once it has done its first useful work
	Data     bool   // the application layer is generated data (dataCmd prints its own Ready)
}

var helloC = []byte(`#include <stdio.h>

int main(void)
{
	puts("READY gcc");
	return 0;
}
`)

var recipes = []recipe{
	{
		Name:     "python",
		Packages: []string{"python3"},
		Cmd:      []string{"python3", "-c", `print("READY python")`},
		Ready:    "READY python",
	},
	{
		Name:     "gcc",
		Packages: []string{"gcc", "libc6-dev"},
		Files:    map[string][]byte{"work/hello.c": helloC},
		Cmd:      []string{"/bin/sh", "-c", "gcc -o /tmp/hello /work/hello.c && exec /tmp/hello"},
		Ready:    "READY gcc",
	},
	{
		Name:     "java",
		Packages: []string{"openjdk-17-jre-headless"},
		Files:    map[string][]byte{"work/Ready.class": printlnClass("Ready", "READY java")},
		Cmd:      []string{"java", "-cp", "/work", "Ready"},
		Ready:    "READY java",
	},
	{
		Name: "data",
		Data: true,
		Cmd:  dataCmd,
	},
}

// Names lists the images this package builds, in the order the benchmark
// reports them.
func Names() []string {
	names := make([]string, len(recipes))
	for i, r := range recipes {
		names[i] = r.Name
	}
	return names
}

func lookupRecipe(name string) (recipe, error) {
	i := slices.IndexFunc(recipes, func(r recipe) bool { return r.Name == name })
	if i < 0 {
		return recipe{}, fmt.Errorf("no benchmark image named %q (there are %v)", name, Names())
	}
	return recipes[i], nil
}

// key names what an image is built from: the recipe, the base and, for the
// data image, its size. Two builds with the same key make the same image
// (up to file times and Debian's point releases).
func (r recipe) key(baseKey string, dataSize int64) string {
	in := struct {
		Version  int
		Base     string
		Recipe   recipe
		DataSize int64 `json:",omitempty"`
	}{recipeVersion, baseKey, r, 0}
	if r.Data {
		in.DataSize = dataSize
	}
	return hashJSON(in)
}

// baseVersion is part of the base layer's cache key: bump it when the base
// is made differently.
const baseVersion = 1

func baseKey(suite string) string {
	return hashJSON(struct {
		Version            int
		Suite, Variant, OS string
		Arch               string
	}{baseVersion, suite, "minbase", "linux", runtime.GOARCH})
}

func hashJSON(v any) string {
	data, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("cache key of %T: %v", v, err)) // only plain data is hashed
	}
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:8])
}
