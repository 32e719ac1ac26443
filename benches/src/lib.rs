//! Load generator and micro-benchmarks for commhub (see the load-generator issue).
