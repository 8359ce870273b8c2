//! VHD (dynamic and fixed) and VHDX (dynamic and fixed, block and log sizes).

use super::tools::{compress_file, convert, create, out_of_order, plain, same};
use super::{KIB, Layout, MIB, Made, Recipe, data_file, recipe, size_name};

pub(super) fn vhd_recipes(v: &mut Vec<Recipe>) {
    // Blocks of 2 MiB.
    let layout = || Layout::spread(8 * MIB, 256 * KIB, 0);
    recipe(v, "vhd dynamic", move |d| {
        let p = convert(d, &layout(), "vpc", "", false, "disk.vhd")?;
        plain(d, p, "vpc", "vhd")
    });
    recipe(v, "vhd dynamic force_size", move |d| {
        let p = convert(d, &layout(), "vpc", "force_size=on", false, "disk.vhd")?;
        plain(d, p, "vpc", "vhd")
    });
    recipe(v, "vhd dynamic blocks written out of order", move |d| {
        let p = d.join("disk.vhd");
        create(&p, "vpc", "", 64 * MIB)?;
        let w = data_file(d, 21, 256 * KIB)?;
        out_of_order(
            "vpc",
            &p,
            &w,
            &[50 * MIB, 3 * MIB + 512, 30 * MIB, 0, 10 * MIB - 4096],
        )?;
        plain(d, p, "vpc", "vhd")
    });
    recipe(v, "vhd fixed", move |d| {
        let p = convert(d, &layout(), "vpc", "subformat=fixed", false, "disk.vhd")?;
        plain(d, p, "vpc", "vhd")
    });
    recipe(v, "vhd fixed force_size in gzip", move |d| {
        let p = convert(
            d,
            &layout(),
            "vpc",
            "subformat=fixed,force_size=on",
            false,
            "disk.vhd",
        )?;
        let e = same(d, &p, "vpc", "vhd", &["gzip"])?;
        Ok(Made::Image(compress_file(d, "disk.vhd", "gzip")?, e))
    });
}

pub(super) fn vhdx_recipes(v: &mut Vec<Recipe>) {
    for (block, log, step) in [
        (MIB, Some(MIB), 8 * MIB),
        (8 * MIB, Some(4 * MIB), 24 * MIB),
        (32 * MIB, Some(32 * MIB), 64 * MIB),
        (256 * MIB, None, 96 * MIB),
    ] {
        let name = format!(
            "vhdx dynamic block={} log={}",
            size_name(block),
            log.map_or("default".into(), size_name)
        );
        recipe(v, name, move |d| {
            let mut opts = format!("block_size={block}");
            if let Some(l) = log {
                opts.push_str(&format!(",log_size={l}"));
            }
            let p = convert(
                d,
                &Layout::spread(step, 256 * KIB, 0),
                "vhdx",
                &opts,
                false,
                "disk.vhdx",
            )?;
            plain(d, p, "vhdx", "vhdx")
        });
    }
    recipe(v, "vhdx fixed block=1M", |d| {
        let opts = "subformat=fixed,block_size=1M";
        let p = convert(
            d,
            &Layout::spread(4 * MIB, 256 * KIB, 0),
            "vhdx",
            opts,
            false,
            "disk.vhdx",
        )?;
        plain(d, p, "vhdx", "vhdx")
    });
    recipe(v, "vhdx dynamic block=8M block_state_zero=off", |d| {
        let opts = "block_size=8M,block_state_zero=off";
        let p = convert(
            d,
            &Layout::spread(24 * MIB, 256 * KIB, 0),
            "vhdx",
            opts,
            false,
            "disk.vhdx",
        )?;
        plain(d, p, "vhdx", "vhdx")
    });
    recipe(v, "vhdx dynamic block=1M blocks written out of order", |d| {
        let p = d.join("disk.vhdx");
        create(&p, "vhdx", "block_size=1M", 64 * MIB + 3 * 512)?;
        let w = data_file(d, 22, 256 * KIB)?;
        out_of_order(
            "vhdx",
            &p,
            &w,
            &[60 * MIB, 3 * MIB - 4096, 30 * MIB, 0, 64 * MIB - 256 * KIB + 1536],
        )?;
        plain(d, p, "vhdx", "vhdx")
    });
}
