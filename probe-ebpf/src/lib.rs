#![no_std]
// Exists so the crate has a library target (aya-template layout).
