#![no_std]
// Exists so the crate has a library target (aya-template layout): meshprobe-delay's build.rs
// depends on it to be rebuilt when it changes.
