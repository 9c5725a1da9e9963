//! Security tests: fetch.
