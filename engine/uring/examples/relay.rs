//! A 1:1 TCP relay on one glommio executor, for comparing CPU per transaction under pgbench:
//! `--mode uring` moves bytes through a helios-uring [`Ring`], `--mode glommio` through glommio's
//! own `TcpStream` (the engine's fallback path). Each accepted client gets its own upstream
//! connection; bytes are forwarded as received, without parsing.
//!
//! ```text
//! cargo run --release -p helios-uring --example relay -- --listen 127.0.0.1:6544 \
//!     --upstream 127.0.0.1:5544 --mode uring
//! pgbench -n -S -c 50 -j 2 -T 20 -h 127.0.0.1 -p 6544 postgres
//! ```
//!
//! It runs until killed; `--stats-every-s` logs the ring's counters.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::task::Poll;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use helios_uring::{Ring, RingConfig, UringStream};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    Uring,
    Glommio,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:6544")]
    listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:5432")]
    upstream: SocketAddr,
    #[arg(long, value_enum, default_value = "uring")]
    mode: Mode,
    /// Pin the executor to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    #[arg(long, default_value_t = 1024)]
    recv_buffers: u16,
    #[arg(long, default_value_t = 16384)]
    recv_buffer_size: u32,
    #[arg(long, default_value_t = 256 * 1024)]
    max_pending_send_bytes: usize,
    /// Log ring statistics this often (0 = never).
    #[arg(long, default_value_t = 0)]
    stats_every_s: u64,
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    let placement = match args.cpu {
        Some(c) => Placement::Fixed(c),
        None => Placement::Unbound,
    };
    LocalExecutorBuilder::new(placement)
        .name("relay")
        .spawn(move || async move {
            if let Err(e) = serve(args).await {
                log::error!("relay: {e:#}");
            }
        })
        .map_err(|e| anyhow::anyhow!("starting the executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("executor: {e}"))?;
    Ok(())
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).map_err(|e| anyhow::anyhow!("bind: {e}"))?;
    log::info!(
        "relay ({:?}) {} -> {}",
        args.mode,
        args.listen,
        args.upstream
    );
    match args.mode {
        Mode::Glommio => loop {
            let client = listener
                .accept()
                .await
                .map_err(|e| anyhow::anyhow!("accept: {e}"))?;
            let upstream = args.upstream;
            glommio::spawn_local(async move {
                if let Err(e) = glommio_pair(client, upstream).await {
                    log::debug!("glommio pair: {e}");
                }
            })
            .detach();
        },
        Mode::Uring => {
            let cfg = RingConfig {
                entries: 1024,
                recv_buffers: args.recv_buffers,
                recv_buffer_size: args.recv_buffer_size,
                max_pending_send_bytes: args.max_pending_send_bytes,
                ..RingConfig::default()
            };
            let ring = Ring::new(&cfg).context("io_uring ring")?;
            ring.spawn_driver();
            if args.stats_every_s > 0 {
                let r = ring.clone();
                glommio::spawn_local(async move {
                    loop {
                        glommio::timer::sleep(Duration::from_secs(args.stats_every_s)).await;
                        log::info!("{:?}", r.stats());
                    }
                })
                .detach();
            }
            loop {
                let client = listener
                    .accept()
                    .await
                    .map_err(|e| anyhow::anyhow!("accept: {e}"))?;
                // The engine will accept on its own; here glommio's accepted socket is duplicated
                // into a std socket the ring takes over.
                // SAFETY: dup of a valid fd; the std socket owns the copy.
                let fd = unsafe { libc::dup(client.as_raw_fd()) };
                drop(client);
                if fd < 0 {
                    log::warn!("dup: {}", io::Error::last_os_error());
                    continue;
                }
                let client = unsafe { std::net::TcpStream::from_raw_fd(fd) };
                // A blocking connect on the shard: immediate on loopback; fine for a benchmark.
                let server = match std::net::TcpStream::connect(args.upstream) {
                    Ok(s) => s,
                    Err(e) => {
                        log::warn!("connect upstream: {e}");
                        continue;
                    }
                };
                client.set_nodelay(true)?;
                server.set_nodelay(true)?;
                let a = ring.register(client)?;
                let b = ring.register(server)?;
                let max = cfg.max_pending_send_bytes;
                glommio::spawn_local(async move {
                    if let Err(e) = uring_pair(a, b, max).await {
                        log::debug!("uring pair: {e}");
                    }
                })
                .detach();
            }
        }
    }
}

async fn glommio_pair(client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut cr, mut cw) = futures_lite::io::split(client);
    let (mut sr, mut sw) = futures_lite::io::split(server);
    let up = async {
        let mut buf = vec![0u8; 16384];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                return io::Result::Ok(());
            }
            sw.write_all(&buf[..n]).await?;
        }
    };
    let down = async {
        let mut buf = vec![0u8; 16384];
        loop {
            let n = sr.read(&mut buf).await?;
            if n == 0 {
                return io::Result::Ok(());
            }
            cw.write_all(&buf[..n]).await?;
        }
    };
    futures_lite::future::or(up, down).await
}

/// Both directions in one task: a received `Bytes` is queued on the other stream as is (no copy);
/// a direction stops receiving while the other side has more than `max` bytes pending.
async fn uring_pair(mut a: UringStream, mut b: UringStream, max: usize) -> io::Result<()> {
    let done = Cell::new(false);
    futures_lite::future::poll_fn(|cx| loop {
        let mut progress = false;
        for dir in 0..2 {
            let (from, to) = if dir == 0 {
                (&mut a, &mut b)
            } else {
                (&mut b, &mut a)
            };
            if to.pending_send_bytes() > max {
                match to.poll_flush(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {}
                }
                continue;
            }
            match from.poll_recv(cx) {
                Poll::Ready(Ok(d)) if d.is_empty() => {
                    done.set(true);
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(d)) => {
                    to.queue_send(d);
                    progress = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if !progress {
            return Poll::Pending;
        }
    })
    .await?;
    if done.get() {
        a.flush().await?;
        b.flush().await?;
    }
    Ok(())
}
