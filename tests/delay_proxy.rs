//! The delay proxy of `tests/common/delay.rs`, on its own (no broker): bytes cross it intact and
//! in order both ways, a round trip costs at least twice the one-way delay, a large transfer is
//! not paced one chunk per delay, a full link stops reading instead of buffering without end,
//! connections made before the upstream is known wait for it, and dropping the proxy closes its
//! connections. The two time bounds here are functional and loose by a wide margin, not
//! measurements.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::delay::{DelayProxy, CHUNK_BYTES, IN_FLIGHT_BYTES};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MIB: usize = 1024 * 1024;

/// An upstream that echoes every byte back and half-closes when its client does.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                    let _ = write.shutdown().await;
                }
            });
        }
    });
    address
}

/// An upstream that reads everything, then answers with the byte count and a checksum of the
/// stream (each 8 bytes, big-endian).
async fn counting_sink() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buffer = vec![0u8; CHUNK_BYTES];
                let mut count = 0u64;
                let mut digest = Digest::default();
                loop {
                    match stream.read(&mut buffer).await {
                        Ok(0) => break,
                        Ok(read) => {
                            count += read as u64;
                            digest.update(&buffer[..read]);
                        }
                        Err(_) => return,
                    }
                }
                let mut answer = count.to_be_bytes().to_vec();
                answer.extend_from_slice(&digest.0.to_be_bytes());
                let _ = stream.write_all(&answer).await;
            });
        }
    });
    address
}

/// An order-sensitive checksum (FNV-1a over the bytes).
#[derive(Clone, Copy)]
struct Digest(u64);

impl Default for Digest {
    fn default() -> Digest {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    fn update(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// `len` bytes of a xorshift stream: no period a moved or repeated chunk could hide in.
fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_echo_comes_back_intact_and_in_order() {
    let proxy = DelayProxy::start(echo_server().await, Duration::from_millis(5));
    let sent = pattern(32 * MIB);
    let stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let to_send = sent.clone();
    let writer = tokio::spawn(async move {
        // Uneven writes, so chunk boundaries on the way differ from the writes.
        for piece in to_send.chunks(100_003) {
            write.write_all(piece).await.unwrap();
        }
        write.shutdown().await.unwrap();
    });
    let mut received = Vec::with_capacity(sent.len());
    let reading = read.read_to_end(&mut received);
    tokio::time::timeout(Duration::from_secs(60), reading)
        .await
        .expect("the echo ended within 60 s")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(received.len(), sent.len(), "bytes echoed");
    if let Some(first) = received.iter().zip(&sent).position(|(a, b)| a != b) {
        panic!("the echo differs from what was sent from byte {first} on");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_message_round_trip_takes_at_least_twice_the_one_way_delay() {
    let one_way = Duration::from_millis(50);
    let proxy = DelayProxy::start(echo_server().await, one_way);
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    for round in 0..5u8 {
        let message = [round; 16];
        let started = Instant::now();
        stream.write_all(&message).await.unwrap();
        let mut answer = [0u8; 16];
        stream.read_exact(&mut answer).await.unwrap();
        let round_trip = started.elapsed();
        assert_eq!(answer, message, "round {round}");
        assert!(
            round_trip >= 2 * one_way,
            "round {round}: a round trip took {round_trip:?}, less than 2 x {one_way:?}"
        );
        // Not a measurement: only that the delay is not a multiple of what was asked.
        assert!(
            round_trip < 2 * one_way + Duration::from_secs(2),
            "round {round}: a round trip took {round_trip:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transfer_is_not_paced_one_chunk_per_delay() {
    let one_way = Duration::from_millis(50);
    let proxy = DelayProxy::start(counting_sink().await, one_way);
    let sent = pattern(16 * MIB);
    let mut digest = Digest::default();
    digest.update(&sent);
    let started = Instant::now();
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(&sent).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = [0u8; 16];
    stream.read_exact(&mut answer).await.unwrap();
    let elapsed = started.elapsed();
    let count = u64::from_be_bytes(answer[..8].try_into().unwrap());
    let checksum = u64::from_be_bytes(answer[8..].try_into().unwrap());
    assert_eq!(count, sent.len() as u64, "bytes that reached the sink");
    assert_eq!(
        checksum, digest.0,
        "the sink saw other bytes, or in another order"
    );
    // A proxy sleeping `one_way` per read (reads are at most CHUNK_BYTES) needs 256 x 50 ms =
    // 12.8 s for this; a delay queue needs ~2 x 50 ms plus the copying. A third of the former
    // leaves seconds of slack for a loaded machine and a debug build.
    let paced_per_read = one_way * (sent.len() / CHUNK_BYTES) as u32;
    assert!(
        elapsed < paced_per_read / 3,
        "16 MiB through a {one_way:?} proxy took {elapsed:?}: paced like a sleep per read \
         ({paced_per_read:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_link_stops_reading_after_carrying_its_budget() {
    // An upstream that accepts and never reads: everything sent piles up in the proxy.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let proxy = DelayProxy::start(upstream, Duration::from_millis(1));
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    let block = vec![7u8; MIB];
    let limit = 4 * IN_FLIGHT_BYTES;
    let mut accepted = 0;
    // Writes stall for good once the proxy's budget and the sockets' buffers are full; a write
    // that makes no progress for 3 s is taken as that stall.
    while accepted < limit {
        match tokio::time::timeout(Duration::from_secs(3), stream.write_all(&block)).await {
            Ok(result) => {
                result.unwrap();
                accepted += block.len();
            }
            Err(_) => break,
        }
    }
    assert!(
        accepted < limit,
        "the proxy took {} MiB without pushing back",
        accepted / MIB
    );
    // The budget plus a few MiB of kernel socket buffers on each side.
    assert!(
        accepted <= IN_FLIGHT_BYTES + 64 * MIB,
        "{} MiB accepted: more than the {} MiB budget plus socket buffers",
        accepted / MIB,
        IN_FLIGHT_BYTES / MIB
    );
    assert!(
        accepted >= IN_FLIGHT_BYTES / 2,
        "pushed back after {} MiB: a far link must carry far more than a bandwidth-delay product",
        accepted / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_made_before_the_upstream_is_known_waits_for_it() {
    let proxy = DelayProxy::bind(Duration::from_millis(1));
    let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
    stream.write_all(b"early").await.unwrap();
    proxy.set_upstream(echo_server().await);
    let mut answer = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut answer))
        .await
        .expect("the early bytes were echoed")
        .unwrap();
    assert_eq!(&answer, b"early");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_proxy_closes_its_connections() {
    let proxy = DelayProxy::start(echo_server().await, Duration::from_millis(1));
    let address = proxy.addr();
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    let mut answer = [0u8; 4];
    stream.read_exact(&mut answer).await.unwrap();
    drop(proxy);
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .expect("the connection closed after the proxy was dropped");
    assert!(
        ended.is_err() || rest.is_empty(),
        "bytes after the drop: {rest:?}"
    );
    // The listener is gone too (a refused connect, or one closed at once if the port was
    // reused; either way nothing is echoed).
    if let Ok(mut again) = TcpStream::connect(address).await {
        let _ = again.write_all(b"ping").await;
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(2), again.read_to_end(&mut answer)).await;
        assert!(
            !matches!(read, Ok(Ok(4))),
            "a dropped proxy still echoes: {answer:?}"
        );
    }
}
