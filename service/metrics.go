package service

import (
	"context"
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazypull/lazypull/cache"
	"github.com/lazypull/lazypull/layer"
	"github.com/lazypull/lazypull/metrics"
)

// serveMetrics serves Prometheus metrics and Go's profiles where the
// configuration says, until ctx is done.
func serveMetrics(ctx context.Context, cfg Config, c *cache.Cache) error {
	if cfg.MetricsAddress != "" {
		opts := []metrics.Option{metrics.WithCollectors(cacheCollector{c}, earlyHeld)}
		if cfg.MetricsAllowRemote {
			opts = append(opts, metrics.AllowRemote())
		}
		if _, err := metrics.Serve(ctx, cfg.MetricsAddress, opts...); err != nil {
			return err
		}
	}
	if cfg.DebugAddress != "" {
		if _, err := metrics.ServeDebug(ctx, cfg.DebugAddress); err != nil {
			return err
		}
	}
	return nil
}

// checkEndpoints refuses metrics and debug addresses that other hosts can
// reach, unless the configuration allows it for metrics.
func (c Config) checkEndpoints() error {
	if c.MetricsAddress != "" && !c.MetricsAllowRemote {
		if err := metrics.CheckLocal(c.MetricsAddress); errors.Is(err, metrics.ErrRemote) {
			return fmt.Errorf("metrics_address %q: other hosts could reach it; use 127.0.0.1:PORT or a unix socket path, or set metrics_allow_remote = true to serve metrics to them", c.MetricsAddress)
		} else if err != nil {
			return fmt.Errorf("metrics_address: %w", err)
		}
	}
	if c.DebugAddress != "" && c.DebugAddress == c.MetricsAddress {
		return fmt.Errorf("debug_address %q: also metrics_address; give profiles an address of their own", c.DebugAddress)
	}
	if c.DebugAddress != "" {
		if err := metrics.CheckLocal(c.DebugAddress); errors.Is(err, metrics.ErrRemote) {
			return fmt.Errorf("debug_address %q: other hosts could reach it; profiles are served on loopback or a unix socket only (reach them from elsewhere through ssh -L)", c.DebugAddress)
		} else if err != nil {
			return fmt.Errorf("debug_address: %w", err)
		}
	}
	return nil
}

// earlyHeld is what the early fetches hold in memory: the bytes of
// profiles' spans and startup files requested before their layers are
// open, not yet taken.
var earlyHeld = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
	Name: "lazypull_early_held_bytes",
	Help: "Bytes fetched ahead of a layer's open (workload profiles' spans, startup files) held in memory until the layer takes them; 64 MiB at most.",
}, func() float64 { return float64(layer.EarlyHeld()) })

// cacheCollector exports the chunk cache's counters at each scrape.
type cacheCollector struct{ c *cache.Cache }

var (
	cacheHits        = prometheus.NewDesc("lazypull_cache_hits_total", "Chunk cache hits, by where they were served from.", []string{"from"}, nil)
	cacheMisses      = prometheus.NewDesc("lazypull_cache_misses_total", "Chunk cache misses.", nil, nil)
	cacheEvictions   = prometheus.NewDesc("lazypull_cache_evictions_total", "Chunks evicted to stay under the cache's size limit.", nil, nil)
	cacheCorruptions = prometheus.NewDesc("lazypull_cache_corruptions_total", "Cached chunks found corrupt and dropped.", nil, nil)
	cacheBytes       = prometheus.NewDesc("lazypull_cache_bytes", "Bytes in the chunk cache on disk.", nil, nil)
	cacheMaxBytes    = prometheus.NewDesc("lazypull_cache_max_bytes", "The chunk cache's size limit on disk (0: unlimited).", nil, nil)
	cacheNoSpace     = prometheus.NewDesc("lazypull_cache_no_space_total", "Chunks not cached because the cache's filesystem was full.", nil, nil)
)

func (cc cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{cacheHits, cacheMisses, cacheEvictions, cacheCorruptions, cacheBytes, cacheMaxBytes, cacheNoSpace} {
		ch <- d
	}
}

func (cc cacheCollector) Collect(ch chan<- prometheus.Metric) {
	s := cc.c.Stats()
	ch <- prometheus.MustNewConstMetric(cacheHits, prometheus.CounterValue, float64(s.DiskHits), "disk")
	ch <- prometheus.MustNewConstMetric(cacheMisses, prometheus.CounterValue, float64(s.Misses))
	ch <- prometheus.MustNewConstMetric(cacheEvictions, prometheus.CounterValue, float64(s.Evictions))
	ch <- prometheus.MustNewConstMetric(cacheCorruptions, prometheus.CounterValue, float64(s.Corruptions))
	ch <- prometheus.MustNewConstMetric(cacheBytes, prometheus.GaugeValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(cacheMaxBytes, prometheus.GaugeValue, float64(s.MaxBytes))
	ch <- prometheus.MustNewConstMetric(cacheNoSpace, prometheus.CounterValue, float64(s.NoSpace))
}
