//! A minimal HTTP backend for the end-to-end tests: answers every request with `200 ok`,
//! except `GET /alloc`, which allocates (and touches) 512 MiB first: in a memory cgroup
//! with a smaller limit, that is an OOM kill on demand.
//! Usage: `why502-test-backend 127.0.0.1:PORT`.

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
};

fn serve(mut stream: TcpStream) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    // Read up to the end of the headers (requests carry no body here), 64 KiB at most.
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    if request.starts_with(b"GET /alloc ") {
        // Written, not just reserved, so the pages are really charged to the cgroup.
        let hog = vec![1u8; 512 << 20];
        std::hint::black_box(&hog);
    }
    let _ = stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
    );
}

fn main() {
    // Rust's runtime catches SIGSEGV to report stack overflows and survives one sent by
    // kill(2); the backends we stand in for (php-fpm, a C or Go server) die of it.
    // SAFETY: restoring the default disposition before any thread starts.
    unsafe { libc::signal(libc::SIGSEGV, libc::SIG_DFL) };
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: why502-test-backend ADDR:PORT");
        std::process::exit(2);
    };
    let listener = match TcpListener::bind(&addr) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("why502-test-backend: cannot listen on {addr}: {err}");
            std::process::exit(1);
        }
    };
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream));
    }
}
