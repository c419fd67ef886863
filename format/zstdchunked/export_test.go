package zstdchunked

// The test helpers, for the tests in package zstdchunked_test: those may
// import internal/testenv, which depends on this package through layer.
var (
	RichLayer = richLayer
	WriteBlob = writeBlob
)
