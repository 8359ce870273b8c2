//! VMDK: monolithicSparse (compat6, zeroed grains, grains out of order) and streamOptimized.

use std::fs;

use super::tools::{convert, create, out_of_order, plain, qemu_img, qemu_io, s};
use super::{KIB, Layout, MIB, Recipe, align_up, data_file, recipe};

pub(super) fn vmdk_recipes(v: &mut Vec<Recipe>) {
    // A grain table maps 512 grains of 64 KiB: 32 MiB. The regions fall in several.
    let layout = || Layout::spread(40 * MIB, 256 * KIB, 0);
    let odd = || Layout::spread(40 * MIB, 256 * KIB, 777);
    recipe(v, "vmdk monolithicSparse", move |d| {
        let p = convert(d, &layout(), "vmdk", "", false, "disk.vmdk")?;
        plain(d, p, "vmdk", "vmdk")
    });
    recipe(
        v,
        "vmdk monolithicSparse size not a multiple of the grain",
        move |d| {
            let p = convert(d, &odd(), "vmdk", "", false, "disk.vmdk")?;
            plain(d, p, "vmdk", "vmdk")
        },
    );
    recipe(v, "vmdk monolithicSparse compat6", move |d| {
        let p = convert(d, &layout(), "vmdk", "compat6=on", false, "disk.vmdk")?;
        plain(d, p, "vmdk", "vmdk")
    });
    recipe(
        v,
        "vmdk monolithicSparse zeroed grains (zeroed_grain=on, write -z)",
        move |d| {
            let l = layout();
            let p = d.join("disk.vmdk");
            create(&p, "vmdk", "zeroed_grain=on", l.size)?;
            let raw = d.join("src.raw");
            l.write(&raw)?;
            qemu_img(&["convert", "-n", "-f", "raw", "-O", "vmdk", s(&raw), s(&p)])?;
            fs::remove_file(&raw)?;
            qemu_io(
                "vmdk",
                &p,
                &[
                    "write -z 0 65536".into(),
                    format!("write -z {} {}", align_up(l.regions[2].off, 65536), 131072),
                    format!("write -z {} {}", 100 * MIB, 65536),
                ],
            )?;
            plain(d, p, "vmdk", "vmdk")
        },
    );
    recipe(v, "vmdk monolithicSparse grains written out of order", move |d| {
        let p = d.join("disk.vmdk");
        create(&p, "vmdk", "", 150 * MIB)?;
        let w = data_file(d, 20, 256 * KIB)?;
        out_of_order(
            "vmdk",
            &p,
            &w,
            &[140 * MIB, 70 * MIB + 4096, 3 * MIB, 100 * MIB, 0],
        )?;
        plain(d, p, "vmdk", "vmdk")
    });
    recipe(v, "vmdk streamOptimized", move |d| {
        let p = convert(
            d,
            &layout(),
            "vmdk",
            "subformat=streamOptimized",
            false,
            "disk.vmdk",
        )?;
        plain(d, p, "vmdk", "vmdk")
    });
    recipe(
        v,
        "vmdk streamOptimized size not a multiple of the grain",
        move |d| {
            let p = convert(d, &odd(), "vmdk", "subformat=streamOptimized", false, "disk.vmdk")?;
            plain(d, p, "vmdk", "vmdk")
        },
    );
}
