use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::*;
use crate::tar::tests::archive;

const OVF: &[u8] = b"<Envelope/>";

fn ova(members: &[(&str, u8, &[u8])]) -> Reader {
    Box::new(io::Cursor::new(archive(members)))
}

async fn read_all(m: &mut OvaMember) -> io::Result<Vec<u8>> {
    let mut v = Vec::new();
    m.reader.read_to_end(&mut v).await?;
    Ok(v)
}

fn ova_error(e: Error) -> String {
    match e {
        Error::InvalidOva(m) => m,
        other => panic!("not InvalidOva: {other:?}"),
    }
}

#[tokio::test]
async fn descriptor_then_members_in_order() {
    let big: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
    let mut r = OvaReader::from_reader(ova(&[
        ("./x.ovf", b'0', OVF),
        ("dir/", b'5', b""),
        ("./disk-0.vmdk", b'0', &big),
        ("link", b'2', b""),
        ("empty", b'0', b""),
        ("x.mf", b'0', b"SHA256(disk-0.vmdk)= 00\n"),
    ]))
    .await
    .unwrap();
    assert_eq!(
        (r.descriptor_name.as_str(), r.descriptor.as_bytes()),
        ("x.ovf", OVF)
    );
    let mut m = r.next_member().await.unwrap().unwrap();
    assert_eq!((m.path.as_str(), m.size), ("disk-0.vmdk", big.len() as u64));
    assert_eq!(read_all(&mut m).await.unwrap(), big);
    let mut m = r.next_member().await.unwrap().unwrap();
    assert_eq!((m.path.as_str(), m.size), ("empty", 0));
    assert!(read_all(&mut m).await.unwrap().is_empty());
    let mut m = r.next_member().await.unwrap().unwrap();
    assert_eq!(read_all(&mut m).await.unwrap(), b"SHA256(disk-0.vmdk)= 00\n");
    assert!(r.next_member().await.unwrap().is_none());
    assert!(r.next_member().await.unwrap().is_none());
}

#[tokio::test]
async fn members_dropped_or_left_behind_are_skipped() {
    let big = vec![1u8; 20 * CHUNK];
    let mut r = OvaReader::from_reader(ova(&[
        ("x.ovf", b'0', OVF),
        ("a", b'0', &big),
        ("b", b'0', &big),
        ("c", b'0', b"c"),
    ]))
    .await
    .unwrap();
    drop(r.next_member().await.unwrap().unwrap());
    // `b` is read a little, then left behind while still held.
    let mut b = r.next_member().await.unwrap().unwrap();
    let mut buf = [0u8; 10];
    b.reader.read_exact(&mut buf).await.unwrap();
    let mut c = r.next_member().await.unwrap().unwrap();
    assert_eq!(c.path, "c");
    assert_eq!(read_all(&mut c).await.unwrap(), b"c");
    let e = read_all(&mut b).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    assert!(r.next_member().await.unwrap().is_none());
}

#[tokio::test]
async fn refused_archives() {
    let open = |r: Reader| async move { ova_error(OvaReader::from_reader(r).await.err().expect("refused")) };
    assert_eq!(open(Box::new(io::Cursor::new(Vec::new()))).await, "empty archive");
    assert_eq!(
        open(Box::new(io::Cursor::new(vec![0u8; 1024]))).await,
        "empty archive"
    );
    let e = open(Box::new(io::Cursor::new(b"this is not an OVA\n".repeat(100)))).await;
    assert!(e.starts_with("not a tar archive: "), "{e}");
    let e = open(ova(&[("disk.vmdk", b'0', b"d"), ("x.ovf", b'0', OVF)])).await;
    assert_eq!(e, "first member \"disk.vmdk\" is not an .ovf descriptor");
    let e = open(ova(&[("../x.ovf", b'0', OVF)])).await;
    assert_eq!(e, "unsafe member name \"../x.ovf\"");
    let huge = vec![b' '; MAX_DESCRIPTOR as usize + 1];
    let e = open(ova(&[("x.ovf", b'0', &huge)])).await;
    assert!(e.contains("over 4194304"), "{e}");

    let mut r = OvaReader::from_reader(ova(&[("x.ovf", b'0', OVF), ("/etc/passwd", b'0', b"x")]))
        .await
        .unwrap();
    let e = ova_error(r.next_member().await.err().unwrap());
    assert_eq!(e, "unsafe member name \"/etc/passwd\"");
}

#[tokio::test]
async fn a_truncated_member_fails_its_reader_and_the_archive() {
    let a = archive(&[("x.ovf", b'0', OVF), ("disk", b'0', &vec![5u8; 4 * CHUNK])]);
    let cut = a[..a.len() - 1024 - CHUNK].to_vec();
    let mut r = OvaReader::from_reader(Box::new(io::Cursor::new(cut)))
        .await
        .unwrap();
    let mut m = r.next_member().await.unwrap().unwrap();
    let e = read_all(&mut m).await.unwrap_err();
    assert!(e.to_string().contains("truncated: \"disk\" ends"), "{e}");
    let e = ova_error(r.next_member().await.err().unwrap());
    assert!(e.starts_with("reading disk: ") && e.contains("truncated"), "{e}");
}

/// Counts the bytes read from it; marks when it is dropped; never ends when `hang`.
struct Probe {
    inner: io::Cursor<Vec<u8>>,
    read: Arc<AtomicU64>,
    dropped: Arc<AtomicBool>,
    hang: bool,
}

impl AsyncRead for Probe {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n == 0 && this.hang {
            return Poll::Pending;
        }
        this.read.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::Relaxed);
    }
}

fn probe(a: Vec<u8>, hang: bool) -> (Reader, Arc<AtomicU64>, Arc<AtomicBool>) {
    let read = Arc::new(AtomicU64::new(0));
    let dropped = Arc::new(AtomicBool::new(false));
    let p = Probe {
        inner: io::Cursor::new(a),
        read: read.clone(),
        dropped: dropped.clone(),
        hang,
    };
    (Box::new(p), read, dropped)
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn reads_ahead_only_a_few_chunks() {
    let disk = vec![3u8; 64 << 20];
    let (reader, read, _) = probe(archive(&[("x.ovf", b'0', OVF), ("disk", b'0', &disk)]), false);
    let mut r = OvaReader::from_reader(reader).await.unwrap();
    let mut m = r.next_member().await.unwrap().unwrap();
    settle().await;
    let ahead = read.load(Ordering::Relaxed);
    let bound = ((DEPTH + 3) * CHUNK) as u64;
    assert!(ahead < bound, "{ahead} bytes read ahead, over {bound}");
    let mut buf = vec![0u8; 1 << 20];
    m.reader.read_exact(&mut buf).await.unwrap();
    settle().await;
    let ahead = read.load(Ordering::Relaxed) - (1 << 20);
    assert!(ahead < bound, "{ahead} bytes read ahead, over {bound}");
    assert_eq!(read_all(&mut m).await.unwrap().len(), (63 << 20));
}

#[tokio::test]
async fn dropping_the_reader_drops_the_stream() {
    // The worker waits on a stream that never ends; dropping the reader and its member
    // stops it.
    let a = archive(&[("x.ovf", b'0', OVF), ("disk", b'0', &[1; 4096])]);
    let (reader, _, dropped) = probe(a[..a.len() - 1024 - 2048].to_vec(), true);
    let mut r = OvaReader::from_reader(reader).await.unwrap();
    let m = r.next_member().await.unwrap().unwrap();
    drop(r);
    settle().await;
    assert!(!dropped.load(Ordering::Relaxed), "the member still reads");
    drop(m);
    for _ in 0..50 {
        if dropped.load(Ordering::Relaxed) {
            return;
        }
        settle().await;
    }
    panic!("the stream was not dropped");
}
