//! Raw `bpf(2)` calls with a 128-octet attribute block, shared by the empty program and the
//! held maps (the bench carries no BPF library).

/// `bpf(2)` with an attribute block of 128 octets (zero beyond what the command uses).
pub(super) fn bpf_syscall(
    cmd: libc::c_long,
    attr: &mut [u8; 128],
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: attr is a valid, zero-padded bpf_attr of the given size.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: on success the kernel returned a new file descriptor that we now own.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r as i32) })
}

/// `bpf(2)` with an attribute block of 128 octets, for commands that return a number rather
/// than a new descriptor (lookups, info queries).
pub(super) fn bpf_syscall_raw(cmd: libc::c_long, attr: &mut [u8; 128]) -> std::io::Result<i64> {
    // SAFETY: attr is a valid, zero-padded bpf_attr of the given size; the pointers it holds
    // (set by the callers) point at buffers that outlive the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}
