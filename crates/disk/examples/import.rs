//! Minimal driver for measurements: `cargo run --release -p ido-disk --example import -- SOURCE TARGET`.
//! (The real command is `ido import`.)

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ido_testkit::install_crypto_provider();
    let mut args = std::env::args().skip(1);
    let (Some(src), Some(dst)) = (args.next(), args.next()) else {
        return Err("usage: import SOURCE TARGET".into());
    };
    let opts = ido_disk::ImportOptions::new(
        ido_disk::SourceSpec::parse(&src)?,
        ido_disk::TargetSpec {
            path: dst.into(),
            capacity: None,
        },
    );
    let r = ido_disk::import(opts).await?;
    eprintln!("{r:?}");
    Ok(())
}
