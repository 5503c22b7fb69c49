//! The process allocator of `gns-federation`: mimalloc, and the one setting
//! it needs to give memory back.
//!
//! By default mimalloc commits its arenas eagerly (on Linux, where memory
//! is overcommitted) and then never purges the pages freed inside them: the
//! peak of a large first sync stayed in the resident set for good (at 100k
//! endpoints about 200 MiB resident against a live heap of ~110 MB). With
//! arenas committed on demand, pages freed for longer than the purge delay
//! (10 ms) go back to the system.
//!
//! The setting must be made before the first arena is reserved, and Rust's
//! runtime allocates before `main` (the main thread's stack-overflow
//! information). So it is made by an ELF constructor, [`RETURN_FREED_MEMORY`],
//! which runs when the binary is loaded; a binary links it by naming it
//! (see [`install`]). It takes precedence over `MIMALLOC_ARENA_EAGER_COMMIT`.

/// The allocator to install with `#[global_allocator]`.
pub use mimalloc::MiMalloc;

/// `mi_option_arena_eager_commit` in mimalloc v2's `mi_option_e`.
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// Runs [`commit_arenas_on_demand`] when the binary is loaded, before the
/// Rust runtime's first allocation.
#[allow(unsafe_code)]
#[used]
#[unsafe(link_section = ".init_array")]
pub static RETURN_FREED_MEMORY: extern "C" fn() = commit_arenas_on_demand;

extern "C" fn commit_arenas_on_demand() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option
    // table (it allocates nothing); any value is valid for this option.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
    }
}

/// Links [`RETURN_FREED_MEMORY`] into the binary that calls it (an unnamed
/// static of a dependency may be left out by the linker) and tells whether
/// the setting is in force.
pub fn install() -> bool {
    std::hint::black_box(&RETURN_FREED_MEMORY);
    // SAFETY: reads mimalloc's option table.
    #[allow(unsafe_code)]
    let value = unsafe { libmimalloc_sys::mi_option_get(ARENA_EAGER_COMMIT) };
    value == 0
}

#[cfg(test)]
mod tests {
    #[global_allocator]
    static ALLOCATOR: super::MiMalloc = super::MiMalloc;

    #[test]
    fn arenas_are_committed_on_demand_from_before_main() {
        // The constructor ran when the test binary was loaded.
        assert!(super::install());
    }
}
