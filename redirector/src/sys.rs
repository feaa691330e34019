//! Raw syscalls that aya 0.14 does not wrap. Every `unsafe` of the crate's
//! syscalls lives here.
#![allow(unsafe_code)]

use std::os::fd::{AsRawFd, BorrowedFd};

/// `union bpf_attr` for BPF_PROG_TEST_RUN (the `test` member).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// What a BPF_PROG_TEST_RUN returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// The program's verdict (XDP_PASS, TC_ACT_SHOT, ...).
    pub retval: u32,
    /// Mean run time per repetition, ns.
    pub duration_ns: u32,
}

/// Runs a loaded XDP or tc program on `packet` in the kernel, without a network.
pub fn prog_test_run(prog: BorrowedFd<'_>, packet: &[u8], repeat: u32) -> std::io::Result<TestRun> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: repeat.max(1),
        ..TestRunAttr::default()
    };
    // SAFETY: attr is a valid, zero-padded bpf_attr prefix of the size we pass;
    // data_in/data_out point at live buffers of the sizes given, which outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestRunAttr,
            std::mem::size_of::<TestRunAttr>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(TestRun { retval: attr.retval, duration_ns: attr.duration })
}

/// The kernel's cookie of a socket (SO_COOKIE): what sockmaps are keyed by.
pub fn socket_cookie(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie and len are live locals of the sizes the kernel writes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Offsets of `tcpi_bytes_acked` and `tcpi_bytes_received` (u64s) in
/// `struct tcp_info` (stable UAPI).
const TCPI_BYTES_ACKED: usize = 120;
const TCPI_BYTES_RECEIVED: usize = 128;

fn tcp_info(fd: BorrowedFd<'_>) -> std::io::Result<[u8; 256]> {
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: info is a live buffer of len bytes; the kernel writes at most len.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if (len as usize) < TCPI_BYTES_RECEIVED + 8 {
        return Err(std::io::Error::other("TCP_INFO too short for tcpi_bytes_received (kernel < 4.1)"));
    }
    Ok(info)
}

fn u64_at(info: &[u8; 256], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&info[at..at + 8]);
    u64::from_ne_bytes(b)
}

/// Payload bytes a TCP socket has received in order (tcpi_bytes_received).
pub fn tcp_bytes_received(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    Ok(u64_at(&tcp_info(fd)?, TCPI_BYTES_RECEIVED))
}

/// Bytes a TCP socket has ever had queued for sending: those acknowledged by
/// the peer (TCP_INFO tcpi_bytes_acked) plus those still in its send queue
/// (SIOCOUTQ). Data redirected into the socket by sk_skb reaches this count
/// once it is in the send queue.
pub fn tcp_bytes_queued(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    let acked = u64_at(&tcp_info(fd)?, TCPI_BYTES_ACKED);
    let mut outq: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int into outq, a live local.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut outq as *mut libc::c_int) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(acked + outq.max(0) as u64)
}

/// Bytes received on a socket and not yet read (FIONREAD).
pub fn bytes_unread(fd: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int into n, a live local.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n as *mut libc::c_int) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(n.max(0) as u64)
}
