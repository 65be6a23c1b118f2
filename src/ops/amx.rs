//! Intel AMX (Advanced Matrix Extensions): eight tile registers `tmm0..tmm7` of 16 rows x 64
//! bytes, and instructions that multiply whole tiles. `tdpbf16ps c, a, b` takes a 16 x 32 bf16
//! tile `a` (each row 16 pairs of neighbouring inner indices) and a tile `b` of 16 rows, row p
//! holding 16 columns' pair p (the "VNNI" layout: `b[p][j] = (B[2p][j], B[2p + 1][j])`), and
//! adds their 16 x 16 product to the f32 tile `c`: 16·16·32 products in one instruction, 16
//! times `vdpbf16ps`'s.
//!
//! `tdpbssd` does the same for int8: a 16 x K tile of int8 by a tile of K/4 rows, row q holding
//! 16 columns' four int8 `B[4q..4q + 4][j]`, summed into i32.
//!
//! Rust has no stable AMX intrinsics, so the instructions are written with `asm!`, one
//! instruction per function, the tile register named by a const parameter. A tile is loaded
//! from rows that lie `stride` bytes apart, so a tile can be read straight out of a larger
//! row-major matrix. [`Shape`] says how the tiles are shaped.
//!
//! Linux gives the tiles' 8 KiB of register state only to a process that asks for it
//! (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); [`granted`] asks once, and a
//! refusal (an old kernel, a sandbox, a CPU without AMX) leaves the AVX-512 kernels in charge
//! (the kernels that use the tiles require the CPU's `amx_tile` and `amx_bf16` or `amx_int8`
//! besides, [`super::lowp::kernel`]).

use std::arch::asm;
#[cfg(target_os = "linux")]
use std::sync::OnceLock;

/// Rows of a tile; bytes in each row.
pub const ROWS: usize = 16;
pub const ROW_BYTES: usize = 64;

/// Whether Linux lets this process use the AMX tiles, asked once (false on a CPU without them,
/// and on other systems, where this code does not ask).
pub fn granted() -> bool {
    #[cfg(target_os = "linux")]
    {
        static GRANTED: OnceLock<bool> = OnceLock::new();
        *GRANTED.get_or_init(|| {
            const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
            const XFEATURE_XTILEDATA: libc::c_long = 18;
            // SAFETY: arch_prctl with this request only changes which register state the
            // kernel will save for this process; it returns 0 when granted, an error where
            // there is no AMX.
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
        })
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// How the eight tiles are shaped: `tmm0-3` hold sums (16 rows of 16 f32 or i32), `tmm4-5`
/// the left operand, `tmm6-7` the right one.
#[derive(Clone, Copy)]
pub enum Shape {
    /// bf16: every tile 16 rows of 64 bytes (16 pairs, or 16 f32).
    Bf16,
    /// One q8_0 block: left tiles 16 rows of 32 int8, right tiles 8 rows of 16 quads.
    Q8Block,
}

/// A tile configuration (palette 1): bytes per row and rows of each tile.
#[repr(C, align(64))]
struct Config([u8; 64]);

const fn config(left_bytes: u8, right_rows: u8) -> Config {
    let mut bytes = [0u8; 64];
    bytes[0] = 1; // palette
    let mut t = 0;
    while t < 8 {
        // colsb[t] (a little-endian u16 at 16 + 2t), rows[t] (at 48 + t)
        let (colsb, rows) = match t {
            4 | 5 => (left_bytes, ROWS as u8),
            6 | 7 => (ROW_BYTES as u8, right_rows),
            _ => (ROW_BYTES as u8, ROWS as u8),
        };
        bytes[16 + 2 * t] = colsb;
        bytes[48 + t] = rows;
        t += 1;
    }
    Config(bytes)
}

static BF16: Config = config(ROW_BYTES as u8, ROWS as u8);
static Q8_BLOCK: Config = config(32, 8);

/// Shapes the tiles for this thread (each thread has its own tile state).
///
/// # Safety
/// Only where [`granted`] and the CPU has the products the tiles will run.
#[inline]
pub unsafe fn configure(shape: Shape) {
    asm!("ldtilecfg [{}]", in(reg) config_of(shape), options(nostack, readonly, preserves_flags));
}

fn config_of(shape: Shape) -> &'static Config {
    match shape {
        Shape::Bf16 => &BF16,
        Shape::Q8Block => &Q8_BLOCK,
    }
}

/// Returns this thread's tiles to their initial state (and the kernel stops saving them).
///
/// # Safety
/// Only where [`usable`] is true.
#[inline]
pub unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem, preserves_flags));
}

/// `tmm{T} = 0`.
///
/// # Safety
/// After [`configure`] on this thread.
#[inline(always)]
pub unsafe fn zero<const T: usize>() {
    asm!("tilezero tmm{t}", t = const T, options(nostack, nomem, preserves_flags));
}

/// `tmm{T}` row r = the 64 bytes at `base + r·stride`.
///
/// # Safety
/// After [`configure`]; the 16 rows must be readable.
#[inline(always)]
pub unsafe fn load<const T: usize>(base: *const u8, stride: usize) {
    asm!(
        "tileloadd tmm{t}, [{base} + {stride}*1]",
        t = const T,
        base = in(reg) base,
        stride = in(reg) stride,
        options(nostack, readonly, preserves_flags)
    );
}

/// The 64 bytes at `base + r·stride` = `tmm{T}` row r.
///
/// # Safety
/// After [`configure`]; the 16 rows must be writable.
#[inline(always)]
pub unsafe fn store<const T: usize>(base: *mut u8, stride: usize) {
    asm!(
        "tilestored [{base} + {stride}*1], tmm{t}",
        t = const T,
        base = in(reg) base,
        stride = in(reg) stride,
        options(nostack, preserves_flags)
    );
}

/// `tmm{C} += tmm{A} · tmm{B}` in bf16 with f32 sums: `c[i][j] += Σ_p a[i][2p]·b[p][2j] +
/// a[i][2p+1]·b[p][2j+1]`.
///
/// # Safety
/// After [`configure`].
#[inline(always)]
pub unsafe fn dot_bf16<const C: usize, const A: usize, const B: usize>() {
    asm!(
        "tdpbf16ps tmm{c}, tmm{a}, tmm{b}",
        c = const C,
        a = const A,
        b = const B,
        options(nostack, nomem, preserves_flags)
    );
}

/// `tmm{C} += tmm{A} · tmm{B}` in int8 with i32 sums: `c[i][j] += Σ_k a[i][k]·b[k/4][4j + k%4]`,
/// both signed.
///
/// # Safety
/// After [`configure`].
#[inline(always)]
pub unsafe fn dot_i8<const C: usize, const A: usize, const B: usize>() {
    asm!(
        "tdpbssd tmm{c}, tmm{a}, tmm{b}",
        c = const C,
        a = const A,
        b = const B,
        options(nostack, nomem, preserves_flags)
    );
}

/// The tile instructions a kernel issues, with the meaning of the functions above: on this
/// CPU's tiles ([`Hardware`]) or, in tests on any CPU, on an emulation of them shaped by the same
/// configuration ([`Emulated`]), so that a kernel's reads, writes and arithmetic are checked
/// where there is no AMX.
pub trait TileOps {
    /// [`zero`].
    ///
    /// # Safety
    /// As [`zero`].
    unsafe fn zero<const T: usize>(&mut self);
    /// [`load`].
    ///
    /// # Safety
    /// As [`load`].
    unsafe fn load<const T: usize>(&mut self, base: *const u8, stride: usize);
    /// [`store`].
    ///
    /// # Safety
    /// As [`store`].
    unsafe fn store<const T: usize>(&mut self, base: *mut u8, stride: usize);
    /// [`dot_i8`].
    ///
    /// # Safety
    /// As [`dot_i8`].
    unsafe fn dot_i8<const C: usize, const A: usize, const B: usize>(&mut self);
}

/// This CPU's tiles.
pub struct Hardware;

impl TileOps for Hardware {
    #[inline(always)]
    unsafe fn zero<const T: usize>(&mut self) {
        zero::<T>()
    }
    #[inline(always)]
    unsafe fn load<const T: usize>(&mut self, base: *const u8, stride: usize) {
        load::<T>(base, stride)
    }
    #[inline(always)]
    unsafe fn store<const T: usize>(&mut self, base: *mut u8, stride: usize) {
        store::<T>(base, stride)
    }
    #[inline(always)]
    unsafe fn dot_i8<const C: usize, const A: usize, const B: usize>(&mut self) {
        dot_i8::<C, A, B>()
    }
}

/// Eight tiles in memory, each shaped (rows, bytes a row) as [`configure`] would shape it: a
/// load or store moves only those bytes, and the rest of a loaded row reads as zero, as on the
/// CPU.
#[cfg(test)]
pub struct Emulated {
    shapes: [(usize, usize); 8],
    tiles: [[[u8; ROW_BYTES]; ROWS]; 8],
}

#[cfg(test)]
impl Emulated {
    pub fn new(shape: Shape) -> Self {
        let config = &config_of(shape).0;
        Emulated {
            shapes: std::array::from_fn(|t| {
                let colsb = u16::from_le_bytes([config[16 + 2 * t], config[17 + 2 * t]]) as usize;
                (config[48 + t] as usize, colsb)
            }),
            tiles: [[[0; ROW_BYTES]; ROWS]; 8],
        }
    }
}

#[cfg(test)]
impl TileOps for Emulated {
    unsafe fn zero<const T: usize>(&mut self) {
        self.tiles[T] = [[0; ROW_BYTES]; ROWS];
    }
    unsafe fn load<const T: usize>(&mut self, base: *const u8, stride: usize) {
        let (rows, colsb) = self.shapes[T];
        self.tiles[T] = [[0; ROW_BYTES]; ROWS];
        for (r, row) in self.tiles[T].iter_mut().enumerate().take(rows) {
            std::ptr::copy_nonoverlapping(base.add(r * stride), row.as_mut_ptr(), colsb);
        }
    }
    unsafe fn store<const T: usize>(&mut self, base: *mut u8, stride: usize) {
        let (rows, colsb) = self.shapes[T];
        for (r, row) in self.tiles[T].iter().enumerate().take(rows) {
            std::ptr::copy_nonoverlapping(row.as_ptr(), base.add(r * stride), colsb);
        }
    }
    unsafe fn dot_i8<const C: usize, const A: usize, const B: usize>(&mut self) {
        let ((m, k), (b_rows, n_bytes), c_shape) = (self.shapes[A], self.shapes[B], self.shapes[C]);
        assert!(b_rows * 4 == k && c_shape == (m, n_bytes), "tile shapes do not fit");
        let (a, b) = (self.tiles[A], self.tiles[B]);
        for (a_row, c_row) in a.iter().zip(&mut self.tiles[C]).take(m) {
            for j in 0..n_bytes / 4 {
                let c = &mut c_row[4 * j..4 * j + 4];
                let mut sum = i32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                for (p, &a) in a_row.iter().enumerate().take(k) {
                    sum = sum.wrapping_add(a as i8 as i32 * b[p / 4][4 * j + p % 4] as i8 as i32);
                }
                c.copy_from_slice(&sum.to_le_bytes());
            }
        }
    }
}

/// One read of an operand's tiles: where its first tile starts, the bytes between its rows,
/// the bytes from its first tile to its second, and from one 32-index step to the next.
#[derive(Clone, Copy)]
pub struct Tiles {
    pub base: *const u8,
    pub stride: usize,
    pub next_tile: usize,
    pub next_step: usize,
}

/// `C[r][p] (=|+=) Σ_steps A_r · B_p` for `row_tiles` (1 or 2) tiles of A (16 rows each) and
/// `col_tiles` (1 or 2) tiles of B (16 columns each), in tmm0-3 (C), tmm4-5 (A), tmm6-7 (B),
/// summed over `steps` steps of 32 inner indices; C[r][p] is at `c + r·16·c_stride + p·64` (16
/// f32 a row), read first when `accumulate`.
///
/// # Safety
/// After [`configure`] on this thread; every tile the steps read and the C tiles must lie in
/// memory the caller owns.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub unsafe fn product_bf16(
    row_tiles: usize,
    col_tiles: usize,
    c: *mut u8,
    c_stride: usize,
    accumulate: bool,
    a: Tiles,
    b: Tiles,
    steps: usize,
) {
    match (row_tiles, col_tiles) {
        (2, 2) => product_bf16_tiles::<2, 2>(c, c_stride, accumulate, a, b, steps),
        (2, 1) => product_bf16_tiles::<2, 1>(c, c_stride, accumulate, a, b, steps),
        (1, 2) => product_bf16_tiles::<1, 2>(c, c_stride, accumulate, a, b, steps),
        (1, 1) => product_bf16_tiles::<1, 1>(c, c_stride, accumulate, a, b, steps),
        _ => panic!("1 or 2 tiles of each operand, not {row_tiles} x {col_tiles}"),
    }
}

/// [`product_bf16`] for R tiles of A and P of B, known when compiled.
#[inline(always)]
unsafe fn product_bf16_tiles<const R: usize, const P: usize>(
    c: *mut u8,
    c_stride: usize,
    accumulate: bool,
    a: Tiles,
    b: Tiles,
    steps: usize,
) {
    const { assert!(R >= 1 && R <= 2 && P >= 1 && P <= 2) };
    let row_tile = ROWS * c_stride;
    if accumulate {
        load::<0>(c, c_stride);
        if P == 2 {
            load::<1>(c.add(ROW_BYTES), c_stride);
        }
        if R == 2 {
            load::<2>(c.add(row_tile), c_stride);
            if P == 2 {
                load::<3>(c.add(row_tile + ROW_BYTES), c_stride);
            }
        }
    } else {
        zero::<0>();
        zero::<1>();
        zero::<2>();
        zero::<3>();
    }
    for s in 0..steps {
        let (a0, b0) = (a.base.add(s * a.next_step), b.base.add(s * b.next_step));
        load::<4>(a0, a.stride);
        load::<6>(b0, b.stride);
        dot_bf16::<0, 4, 6>();
        if P == 2 {
            load::<7>(b0.add(b.next_tile), b.stride);
            dot_bf16::<1, 4, 7>();
        }
        if R == 2 {
            load::<5>(a0.add(a.next_tile), a.stride);
            dot_bf16::<2, 5, 6>();
            if P == 2 {
                dot_bf16::<3, 5, 7>();
            }
        }
    }
    store::<0>(c, c_stride);
    if P == 2 {
        store::<1>(c.add(ROW_BYTES), c_stride);
    }
    if R == 2 {
        store::<2>(c.add(row_tile), c_stride);
        if P == 2 {
            store::<3>(c.add(row_tile + ROW_BYTES), c_stride);
        }
    }
}
