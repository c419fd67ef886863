// Package metrics holds lazypull's Prometheus metrics and serves them, and
// serves Go's profiles on a separate debug address. The packages that do
// the work record into the metrics defined here; this package knows metric
// names, HTTP and local sockets, nothing of layers or registries.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/containerd/log"
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
	// LayerVerifications counts lazily mounted layers checked against
	// their image, by result (verified, rejected).
	LayerVerifications = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: namespace, Name: "layer_verifications_total",
		Help: "Lazily mounted layers checked against their image's diff_id, by result: rejected ones serve nothing.",
	}, []string{"result"})
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

// Option configures Serve.
type Option func(*options)

type options struct {
	collectors  []prometheus.Collector
	allowRemote bool
}

// WithCollectors adds collectors to those served on /metrics.
func WithCollectors(c ...prometheus.Collector) Option {
	return func(o *options) { o.collectors = append(o.collectors, c...) }
}

// AllowRemote lets Serve listen on a TCP address that other hosts can
// reach; without it only loopback addresses and unix sockets are accepted.
func AllowRemote() Option {
	return func(o *options) { o.allowRemote = true }
}

// Timeouts of both endpoints, so that a slow or idle client cannot hold a
// connection. A scrape or a profile snapshot answers at once; pprof's CPU
// profile, trace and delta profiles move their own write deadline past
// the duration they were asked to run.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 60 * time.Second
)

// Serve serves /metrics on addr (host:port, or the absolute path of a unix
// socket) with lazypull's metrics and those added WithCollectors, until
// ctx is done. It returns the address it listens on (":0" picks a port).
// Go's profiles are not served here: see ServeDebug.
func Serve(ctx context.Context, addr string, opts ...Option) (net.Addr, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	reg := prometheus.NewRegistry()
	for _, c := range append([]prometheus.Collector{RegistryRequests, RegistryBytes, RegistryLatency, FUSEOperations, MountedLayers, LayerVerifications}, o.collectors...) {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	return serve(ctx, "metrics", addr, o.allowRemote, mux)
}

// ServeDebug serves Go's profiles on /debug/pprof/ at addr until ctx is
// done, as containerd's debug address does: where an operator looks when
// the process is slow or large. They are unauthenticated and cost the
// process CPU, so addr must be a loopback address or a unix socket.
func ServeDebug(ctx context.Context, addr string) (net.Addr, error) {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return serve(ctx, "debug", addr, false, mux)
}

func serve(ctx context.Context, what, addr string, allowRemote bool, h http.Handler) (net.Addr, error) {
	lis, err := listen(addr, allowRemote)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
	}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.G(ctx).WithError(err).Errorf("%s server on %s stopped", what, addr)
		}
	}()
	return lis.Addr(), nil
}
