//! Runtime-agnostic async driver (in progress).
