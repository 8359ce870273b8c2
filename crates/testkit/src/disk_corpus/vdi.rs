//! VDI: dynamic and static.

use super::tools::{convert, create, out_of_order, plain};
use super::{KIB, Layout, MIB, Recipe, data_file, recipe};

pub(super) fn vdi_recipes(v: &mut Vec<Recipe>) {
    // Blocks of 1 MiB.
    recipe(v, "vdi dynamic", |d| {
        let p = convert(
            d,
            &Layout::spread(6 * MIB, 256 * KIB, 0),
            "vdi",
            "",
            false,
            "disk.vdi",
        )?;
        plain(d, p, "vdi", "vdi")
    });
    recipe(v, "vdi static", |d| {
        let p = convert(
            d,
            &Layout::spread(6 * MIB, 256 * KIB, 0),
            "vdi",
            "static=on",
            false,
            "disk.vdi",
        )?;
        plain(d, p, "vdi", "vdi")
    });
    recipe(v, "vdi static size not a multiple of the block", |d| {
        let p = convert(
            d,
            &Layout::spread(3 * MIB, 256 * KIB, 777),
            "vdi",
            "static=on",
            false,
            "disk.vdi",
        )?;
        plain(d, p, "vdi", "vdi")
    });
    recipe(v, "vdi dynamic blocks written out of order", |d| {
        let p = d.join("disk.vdi");
        create(&p, "vdi", "", 48 * MIB)?;
        let w = data_file(d, 23, 256 * KIB)?;
        out_of_order(
            "vdi",
            &p,
            &w,
            &[40 * MIB, 2 * MIB + 512, 20 * MIB, 0, 48 * MIB - 256 * KIB],
        )?;
        plain(d, p, "vdi", "vdi")
    });
}
