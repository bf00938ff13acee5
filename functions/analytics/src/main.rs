//! The analytics function binary: no model, so init is instant.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> Result<(), thaw_fn::Error> {
    thaw_fn::run(|| Ok(analytics::Analytics))
}
