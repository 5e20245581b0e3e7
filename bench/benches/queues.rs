//! What a bounded queue between two of ingest's stages costs per message: ingest's own
//! (`ingest::queue`: crossbeam's lock-free `ArrayQueue` with a waker per end, between two
//! async tasks), against tokio's `mpsc` (which joined the stages before it; it takes a mutex
//! on every receive) and crossbeam's bounded channel between two threads of their own (each
//! stage would then own a thread and block it while it waits).
//!
//! A producer passes 100,000 messages of 128 bytes (by value, as ingest's queues carry their
//! messages) through a queue of 256 (`ingest.queue`'s default) to a consumer that adds up one
//! field. Ingest passes about 250 messages a second at 250,000 readings/s, each spending
//! milliseconds in decoding and storage, so what matters is the queue's cost next to that.
//! Run with `bench/run.sh queues`; the results are recorded in BENCHMARKS.md.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const MESSAGES: u64 = 100_000;
/// `ingest.queue`'s default.
const CAPACITY: usize = 256;

/// A message of 128 bytes.
type Message = [u64; 16];

fn message(n: u64) -> Message {
    let mut m = [0; 16];
    m[0] = n;
    m
}

/// Passes the messages from a producer to a consumer, tasks of a runtime of two threads (as
/// ingest's stages run on the server's runtime), through the queue `$queue` makes: its sender
/// waits in `send`, its receiver in `recv`, which gives `None` once the sender has gone.
macro_rules! through_two_tasks {
    ($runtime:expr, $queue:expr) => {
        $runtime.block_on(async {
            let (tx, mut rx) = $queue;
            let producer = tokio::spawn(async move {
                for n in 0..MESSAGES {
                    if tx.send(message(n)).await.is_err() {
                        break;
                    }
                }
            });
            let mut sum = 0;
            while let Some(m) = rx.recv().await {
                sum += m[0];
            }
            producer.await.expect("the producer ran to its end");
            sum
        })
    };
}

/// Through tokio's bounded channel.
fn tokio_mpsc(runtime: &tokio::runtime::Runtime) -> u64 {
    through_two_tasks!(runtime, tokio::sync::mpsc::channel::<Message>(CAPACITY))
}

/// Through ingest's queue.
fn ingest_queue(runtime: &tokio::runtime::Runtime) -> u64 {
    through_two_tasks!(runtime, ingest::queue::bounded::<Message>(CAPACITY))
}

/// Through crossbeam's bounded channel, producer and consumer each on a thread of its own.
fn crossbeam_bounded() -> u64 {
    let (tx, rx) = crossbeam_channel::bounded::<Message>(CAPACITY);
    let producer = std::thread::spawn(move || {
        for n in 0..MESSAGES {
            if tx.send(message(n)).is_err() {
                break;
            }
        }
    });
    let sum = rx.iter().map(|m| m[0]).sum();
    producer.join().expect("the producer ran to its end");
    sum
}

fn queues(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a runtime");
    let expected = MESSAGES * (MESSAGES - 1) / 2;
    assert_eq!(ingest_queue(&runtime), expected);
    assert_eq!(tokio_mpsc(&runtime), expected);
    assert_eq!(crossbeam_bounded(), expected);
    let mut group = c.benchmark_group("bounded queue, 128-byte messages");
    group.throughput(Throughput::Elements(MESSAGES));
    group.bench_function("ingest's queue (crossbeam ArrayQueue), two tasks", |b| {
        b.iter(|| black_box(ingest_queue(&runtime)));
    });
    group.bench_function("tokio mpsc, two tasks", |b| {
        b.iter(|| black_box(tokio_mpsc(&runtime)));
    });
    group.bench_function("crossbeam bounded, two threads", |b| {
        b.iter(|| black_box(crossbeam_bounded()));
    });
    group.finish();
}

criterion_group!(benches, queues);
criterion_main!(benches);
