// Package metrics holds lazypull's Prometheus metrics and serves them. The
// packages that do the work record into the metrics defined here; this
// package knows metric names and HTTP, nothing of layers or registries.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "lazypull"

var (
	// RegistryRequests counts ranged blob requests by registry host and
	// outcome (an HTTP status, or "error").
	RegistryRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "registry_requests_total",
		Help: "Ranged blob requests to registries, by host and outcome.",
	}, []string{"registry", "outcome"})
	// RegistryBytes counts blob bytes received by registry host.
	RegistryBytes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "registry_fetched_bytes_total",
		Help: "Blob bytes fetched from registries, by host.",
	}, []string{"registry"})
	// RegistryLatency observes how long ranged requests take to answer.
	RegistryLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "registry_request_seconds",
		Help:    "Time to the response headers of ranged blob requests, by host.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
	}, []string{"registry"})
	// FUSEOperations observes FUSE operations served for lazy layers.
	FUSEOperations = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: namespace, Name: "fuse_operation_seconds",
		Help:    "Latency of FUSE operations on lazily mounted layers, by operation.",
		Buckets: prometheus.ExponentialBuckets(0.00001, 4, 12),
	}, []string{"operation"})
	// MountedLayers is how many layers are mounted lazily.
	MountedLayers = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: namespace, Name: "mounted_layers",
		Help: "Layers mounted lazily.",
	})
)

// ObserveFUSE records the latency of one FUSE operation started at start.
func ObserveFUSE(op string, start time.Time) {
	FUSEOperations.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

// Serve serves /metrics on addr (host:port, or a unix socket path) with
// lazypull's metrics and the extra collectors, until ctx is done.
func Serve(ctx context.Context, addr string, extra ...prometheus.Collector) error {
	reg := prometheus.NewRegistry()
	for _, c := range append([]prometheus.Collector{RegistryRequests, RegistryBytes, RegistryLatency, FUSEOperations, MountedLayers}, extra...) {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	network := "tcp"
	if len(addr) > 0 && addr[0] == '/' {
		network = "unix"
	}
	lis, err := net.Listen(network, addr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	// Go's profiles, as containerd's debug address serves them: where an
	// operator (or we) looks when the FUSE manager is slow or large.
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Printf("metrics server on %s stopped: %v\n", addr, err)
		}
	}()
	return nil
}
