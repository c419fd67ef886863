package service

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/lazypull/lazypull/cache"
)

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
	ch <- prometheus.MustNewConstMetric(cacheHits, prometheus.CounterValue, float64(s.MemoryHits), "memory")
	ch <- prometheus.MustNewConstMetric(cacheHits, prometheus.CounterValue, float64(s.DiskHits), "disk")
	ch <- prometheus.MustNewConstMetric(cacheMisses, prometheus.CounterValue, float64(s.Misses))
	ch <- prometheus.MustNewConstMetric(cacheEvictions, prometheus.CounterValue, float64(s.Evictions))
	ch <- prometheus.MustNewConstMetric(cacheCorruptions, prometheus.CounterValue, float64(s.Corruptions))
	ch <- prometheus.MustNewConstMetric(cacheBytes, prometheus.GaugeValue, float64(s.Bytes))
	ch <- prometheus.MustNewConstMetric(cacheMaxBytes, prometheus.GaugeValue, float64(s.MaxBytes))
	ch <- prometheus.MustNewConstMetric(cacheNoSpace, prometheus.CounterValue, float64(s.NoSpace))
}
