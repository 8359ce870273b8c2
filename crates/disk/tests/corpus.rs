//! The differential corpus (`ido_testkit::disk_corpus`): about a hundred images made by
//! qemu-img, qemu-io, qemu-system and the usual compressors and tar, each imported from a
//! file, from stdin (a pipe) and over HTTP (nginx, parallel ranged GETs). The output must
//! equal `qemu-img convert -O raw` of the disk in bytes and length, with the format and
//! layers the case says; what must be refused is refused (`refused`, the message naming
//! why) and leaves no target. Every failure is collected, then one assertion lists them
//! all by case and source.
//!
//! Stdin is this process's own, so a stdin import runs in a child: this test binary again,
//! filtered to [`stdin_child`], with the image piped to it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ido_disk::{HttpOptions, ImportOptions, SourceSpec, TargetSpec, import};
use ido_testkit::disk_corpus::{self, Case, Expect};
use ido_testkit::nginx::Nginx;
use tokio::io::AsyncWriteExt;
use tokio::sync::Semaphore;

/// Environment of the stdin child: where it writes the image and its outcome.
const CHILD_TARGET: &str = "IDO_CORPUS_STDIN_TARGET";
const CHILD_RESULT: &str = "IDO_CORPUS_STDIN_RESULT";
/// Imports at once (the machine has two cores; decoders use both).
const CONCURRENT: usize = 3;
/// Longest one import may take.
const IMPORT_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    File,
    Stdin,
    Http,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::File => "file",
            Via::Stdin => "stdin",
            Via::Http => "HTTP",
        })
    }
}

/// What one import did.
#[derive(Debug)]
enum Outcome {
    Imported {
        format: String,
        layers: Vec<String>,
        virtual_size: u64,
    },
    Failed {
        label: String,
        message: String,
    },
}

impl Outcome {
    fn encode(&self) -> String {
        match self {
            Outcome::Imported {
                format,
                layers,
                virtual_size,
            } => format!("ok\n{format}\n{}\n{virtual_size}", layers.join(",")),
            Outcome::Failed { label, message } => format!("err\n{label}\n{message}"),
        }
    }

    fn decode(s: &str) -> Option<Self> {
        let mut it = s.splitn(4, '\n');
        match it.next()? {
            "ok" => {
                let format = it.next()?.to_string();
                let layers = it.next()?;
                let layers = layers
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect();
                let virtual_size = it.next()?.parse().ok()?;
                Some(Outcome::Imported {
                    format,
                    layers,
                    virtual_size,
                })
            }
            "err" => {
                let label = it.next()?.to_string();
                let message = it.collect::<Vec<_>>().join("\n");
                Some(Outcome::Failed { label, message })
            }
            _ => None,
        }
    }
}

async fn in_process(source: SourceSpec, target: &Path) -> Outcome {
    let opts = ImportOptions::new(
        source,
        TargetSpec {
            path: target.to_path_buf(),
            capacity: None,
        },
    );
    match tokio::time::timeout(IMPORT_TIMEOUT, import(opts)).await {
        Ok(Ok(r)) => Outcome::Imported {
            format: r.format.name().to_string(),
            layers: r.layers.iter().map(|l| l.to_string()).collect(),
            virtual_size: r.virtual_size,
        },
        Ok(Err(e)) => Outcome::Failed {
            label: e.label().to_string(),
            message: e.to_string(),
        },
        Err(_) => Outcome::Failed {
            label: "timeout".into(),
            message: format!("no result after {IMPORT_TIMEOUT:?}"),
        },
    }
}

/// Not a test by itself: [`corpus_matches_qemu_img`] runs this binary again with only this
/// test and an image piped to its stdin; without the environment it does nothing.
#[tokio::test]
async fn stdin_child() {
    let (Some(target), Some(result)) = (std::env::var_os(CHILD_TARGET), std::env::var_os(CHILD_RESULT))
    else {
        return;
    };
    let outcome = in_process(SourceSpec::Stdin, Path::new(&target)).await;
    std::fs::write(result, outcome.encode()).unwrap();
}

/// Imports `image` through a pipe into a child's stdin.
async fn through_stdin(image: &Path, target: &Path) -> Outcome {
    let result = target.with_extension("outcome");
    let mut child = match tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["stdin_child", "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(CHILD_TARGET, target)
        .env(CHILD_RESULT, &result)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            return Outcome::Failed {
                label: "child".into(),
                message: format!("spawning the stdin child: {e}"),
            };
        }
    };
    let mut stdin = child.stdin.take().unwrap();
    let image = image.to_path_buf();
    // A refusal closes the pipe early: a write error here is expected then.
    let feed = tokio::spawn(async move {
        if let Ok(mut f) = tokio::fs::File::open(&image).await {
            let _ = tokio::io::copy(&mut f, &mut stdin).await;
            let _ = stdin.shutdown().await;
        }
    });
    let out = match tokio::time::timeout(IMPORT_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            return Outcome::Failed {
                label: "child".into(),
                message: format!("waiting for the stdin child: {e}"),
            };
        }
        Err(_) => {
            return Outcome::Failed {
                label: "timeout".into(),
                message: format!("no result after {IMPORT_TIMEOUT:?}"),
            };
        }
    };
    let _ = feed.await;
    let text = std::fs::read_to_string(&result).unwrap_or_default();
    let _ = std::fs::remove_file(&result);
    Outcome::decode(&text).unwrap_or_else(|| Outcome::Failed {
        label: "child".into(),
        message: format!(
            "the stdin child left no outcome ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// `qemu-img compare` of two raw files (holes and zeros alike, data regions only).
async fn compare(got: &Path, want: &Path) -> Result<(), String> {
    let out = tokio::process::Command::new("qemu-img")
        .args(["compare", "-U", "-f", "raw", "-F", "raw"])
        .arg(got)
        .arg(want)
        .output()
        .await
        .map_err(|e| format!("running qemu-img compare: {e}"))?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(format!(
            "content differs from qemu-img's: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )),
        _ => Err(format!(
            "qemu-img compare: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// Imports one case one way; `Err` says what went wrong.
async fn check(case: &Case, via: Via, target: &Path, url: &str) -> Result<(), String> {
    let outcome = match via {
        Via::File => in_process(SourceSpec::File(case.image.clone()), target).await,
        Via::Stdin => through_stdin(&case.image, target).await,
        Via::Http => {
            let mut h = HttpOptions::new(url.parse().unwrap());
            // Parallel ranged GETs even for small images.
            h.parallel_min = 0;
            h.chunk_size = 1 << 20;
            in_process(SourceSpec::Http(Box::new(h)), target).await
        }
    };
    let left = if target.exists() {
        " [and the target was left behind]"
    } else {
        ""
    };
    // A descriptor with its extents beside it is read only from a local file.
    let expect = match &case.expect {
        Expect::LocalOnly { oracle, format, .. } if via == Via::File => Expect::Same {
            oracle: oracle.clone(),
            format,
            layers: vec![],
        },
        Expect::LocalOnly { reason, .. } => Expect::Refused { reason },
        other => other.clone(),
    };
    let verdict = match (&expect, outcome) {
        (
            Expect::Same {
                oracle,
                format,
                layers,
            },
            Outcome::Imported {
                format: got_format,
                layers: got_layers,
                virtual_size,
            },
        ) => {
            let mut problems = vec![];
            if got_format != *format {
                problems.push(format!("format {got_format}, expected {format}"));
            }
            if got_layers != *layers {
                problems.push(format!("layers {got_layers:?}, expected {layers:?}"));
            }
            let want = std::fs::metadata(oracle).map(|m| m.len()).unwrap_or(0);
            match std::fs::metadata(target).map(|m| m.len()) {
                Err(e) => problems.push(format!("no target: {e}")),
                Ok(got) if got != want => {
                    problems.push(format!("length {got}, qemu-img's is {want}"));
                    if let Err(e) = compare(target, oracle).await {
                        problems.push(e);
                    }
                }
                Ok(_) => {
                    if let Err(e) = compare(target, oracle).await {
                        problems.push(e);
                    }
                }
            }
            if virtual_size != want {
                problems.push(format!(
                    "reported virtual size {virtual_size}, qemu-img's is {want}"
                ));
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems.join("; "))
            }
        }
        (Expect::Same { .. }, Outcome::Failed { label, message }) => {
            Err(format!("failed ({label}): {message}{left}"))
        }
        (Expect::Refused { reason }, Outcome::Failed { label, message }) => {
            if label == "refused" && message.contains(reason) && left.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "expected a refusal naming {reason:?}, got ({label}): {message}{left}"
                ))
            }
        }
        (Expect::Refused { reason }, Outcome::Imported { format, .. }) => Err(format!(
            "imported as {format}; expected a refusal naming {reason:?}{left}"
        )),
        (Expect::LocalOnly { .. }, _) => unreachable!("resolved above"),
    };
    let _ = std::fs::remove_file(target);
    verdict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corpus_matches_qemu_img() {
    if std::env::var_os(CHILD_TARGET).is_some() {
        return;
    }
    ido_testkit::install_crypto_provider();
    let start = Instant::now();
    let missing = disk_corpus::missing_tools();
    let dir = tempfile::Builder::new().prefix("ido-corpus-").tempdir().unwrap();
    let images = dir.path().join("images");
    let outs = dir.path().join("out");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&outs).unwrap();
    let corpus = tokio::task::spawn_blocking(move || disk_corpus::generate(&images, 2))
        .await
        .unwrap()
        .unwrap();
    let generated = start.elapsed();
    let nginx = Nginx::start(&corpus.dir).await.unwrap();

    let sem = Arc::new(Semaphore::new(CONCURRENT));
    let mut set = tokio::task::JoinSet::new();
    for (i, case) in corpus.cases.iter().enumerate() {
        for (j, via) in [Via::File, Via::Stdin, Via::Http].into_iter().enumerate() {
            let case = case.clone();
            let url = nginx.url(&case.rel);
            let target: PathBuf = outs.join(format!("{i:03}-{via}.img"));
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.unwrap();
                let t = Instant::now();
                let r = check(&case, via, &target, &url).await;
                ((i, j), case.name, via, t.elapsed(), r)
            });
        }
    }
    let mut results = set.join_all().await;
    results.sort_by_key(|r| r.0);
    let imported = start.elapsed() - generated;

    let mut failures: Vec<String> = corpus.failed.iter().map(|f| format!("generating {f}")).collect();
    let mut per_via = [Duration::ZERO; 3];
    let mut slowest: Vec<(Duration, String)> = vec![];
    for ((_, j), name, via, took, r) in &results {
        per_via[*j] += *took;
        slowest.push((*took, format!("{name} via {via}")));
        if let Err(e) = r {
            failures.push(format!("{name} via {via}: {e}"));
        }
    }
    slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
    let summary = format!(
        "corpus: {} cases ({} refused from some source) x 3 sources = {} imports, {} failures; generation {:.1?}, \
         imports {:.1?} (summed per source: file {:.1?}, stdin {:.1?}, HTTP {:.1?}); slowest: {}\n\
         skipped: {:?}\nmissing tools: {:?}",
        corpus.cases.len(),
        corpus
            .cases
            .iter()
            .filter(|c| !matches!(c.expect, Expect::Same { .. }))
            .count(),
        results.len(),
        failures.len(),
        generated,
        imported,
        per_via[0],
        per_via[1],
        per_via[2],
        slowest
            .iter()
            .take(5)
            .map(|(t, n)| format!("{n} {t:.1?}"))
            .collect::<Vec<_>>()
            .join(", "),
        corpus.skipped,
        missing,
    );
    println!("{summary}");
    drop(nginx);
    assert!(
        failures.is_empty(),
        "{summary}\n{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
