//! Security tests: templates.
