//! Security tests: apiserver.
