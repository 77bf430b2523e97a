//! One place for what the bench reads from the kernel about processes and BPF programs:
//! /proc (CPU, memory, context switches) and the BPF run-time accounting, with the maps and
//! the empty program the scenarios hold for it.

pub mod bpf_stats;
pub mod held_map;
pub mod procfs;
mod syscall;
