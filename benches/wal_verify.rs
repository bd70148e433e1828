//! Throughput of the streaming WAL verifier over real segments (fixtures/wal), fed in the
//! 128 kB chunks the network delivers. Target: at least 2 GiB/s on one core.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use walden::wal::{
    Lsn, PageMagic, SegNo, TimelineId, VerifierConfig, WalSegSize, WalVerifier,
    find_end_of_valid_wal, segment_file_name,
};

const CHUNK: usize = 128 * 1024;

/// Timeline 1 of the PostgreSQL 18 fixtures: segments 8 to 0xA end to end (3 MiB: many
/// small records, a 2.2 MB record over two segment boundaries, a switch record).
fn segments(size: WalSegSize) -> Vec<u8> {
    let mut all = Vec::new();
    for segno in 8..=0xA {
        let name = segment_file_name(TimelineId(1), SegNo(segno), size);
        let path = format!("{}/fixtures/wal/pg18/{name}", env!("CARGO_MANIFEST_DIR"));
        all.extend(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")));
    }
    all
}

fn bench(c: &mut Criterion) {
    let size = WalSegSize::new(1 << 20).expect("1 MiB is a valid segment size");
    let config = VerifierConfig {
        seg_size: size,
        magic: PageMagic::for_major(18).expect("18 is known"),
        tli: TimelineId(1),
        system_identifier: None,
    };
    let wal = segments(size);
    let mut group = c.benchmark_group("wal_verify");
    group.throughput(Throughput::Bytes(wal.len() as u64));
    group.bench_function("stream_128k_chunks", |b| {
        b.iter(|| {
            let mut v = WalVerifier::new(config, Lsn(8 << 20)).expect("page-aligned start");
            for chunk in wal.chunks(CHUNK) {
                v.feed(chunk).expect("fixtures are valid WAL");
            }
            v.records()
        })
    });
    let first = wal.get(..1 << 20).expect("three segments");
    group.throughput(Throughput::Bytes(first.len() as u64));
    group.bench_function("find_end_of_valid_wal", |b| {
        b.iter(|| find_end_of_valid_wal(first, config, SegNo(8)).expect("valid start"))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
