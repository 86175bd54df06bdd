//! The IDX file format of MNIST and Fashion-MNIST: a big-endian header (two zero bytes,
//! a type byte, a dimension count, one `u32` per dimension) followed by exactly as many
//! bytes as the dimensions multiply to. Only unsigned-byte arrays (type `0x08`) are read.
//! Files may be raw or gzip-compressed; the gzip magic decides, not the file name.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;

use crate::error::{Error, Result};

/// The IDX type byte of unsigned bytes, the only element type rewire reads.
const IDX_UBYTE: u8 = 0x08;
/// Most dimensions an IDX file may declare here (MNIST uses 1 or 3).
const MAX_DIMS: u8 = 4;
/// The two bytes every gzip stream starts with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// An unsigned-byte array read from an IDX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first (`[n, 28, 28]` for MNIST images, `[n]` for labels).
    pub dims: Vec<usize>,
    /// The elements, row-major; exactly `dims.iter().product()` of them.
    pub data: Vec<u8>,
}

/// Name of an IDX type byte, for error messages.
fn type_name(t: u8) -> &'static str {
    match t {
        0x08 => "unsigned byte",
        0x09 => "signed byte",
        0x0B => "i16",
        0x0C => "i32",
        0x0D => "f32",
        0x0E => "f64",
        _ => "unknown type",
    }
}

/// Validates the IDX header of `bytes` and returns the dimensions and the header length.
/// The data must follow the header exactly: no byte missing, none left over.
fn parse_header(bytes: &[u8], source: &str) -> Result<(Vec<usize>, usize)> {
    if bytes.len() < 4 {
        return Err(Error::format(
            source,
            format!(
                "truncated IDX header: the file has {} bytes, the header needs at least 4",
                bytes.len()
            ),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::format(
            source,
            format!(
                "bad IDX magic: the first two bytes are 0x{:02x} 0x{:02x}, expected 0x00 0x00 \
                 (not an IDX file?)",
                bytes[0], bytes[1]
            ),
        ));
    }
    let ty = bytes[2];
    if ty != IDX_UBYTE {
        return Err(Error::format(
            source,
            format!(
                "unsupported IDX data type 0x{ty:02x} ({}); only 0x08 (unsigned byte) is supported",
                type_name(ty)
            ),
        ));
    }
    let ndims = bytes[3];
    if ndims == 0 || ndims > MAX_DIMS {
        return Err(Error::format(
            source,
            format!("IDX header declares {ndims} dimensions; expected 1 to {MAX_DIMS}"),
        ));
    }
    let header_len = 4 + 4 * ndims as usize;
    if bytes.len() < header_len {
        return Err(Error::format(
            source,
            format!(
                "truncated IDX header: {ndims} dimensions need a {header_len}-byte header, \
                 the file has {} bytes",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = bytes[4..header_len]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::format(
                source,
                format!("IDX dimensions {dims:?} multiply to more than usize can hold"),
            )
        })?;
    let got = bytes.len() - header_len;
    if got < expected {
        return Err(Error::format(
            source,
            format!(
                "truncated IDX data: dimensions {dims:?} need {expected} bytes after the \
                 header, got {got}"
            ),
        ));
    }
    if got > expected {
        return Err(Error::format(
            source,
            format!(
                "{} trailing bytes after the IDX data: dimensions {dims:?} need {expected} \
                 bytes after the header, got {got}",
                got - expected
            ),
        ));
    }
    Ok((dims, header_len))
}

/// Parses an in-memory IDX file (uncompressed). `source` names the file in error messages.
///
/// Rejects a bad magic, an element type other than unsigned byte, a dimension count
/// outside `1..=4`, a truncated header, dimensions whose product overflows, and data
/// that is shorter or longer than the dimensions say.
pub fn parse_idx(bytes: &[u8], source: &str) -> Result<IdxArray> {
    let (dims, header_len) = parse_header(bytes, source)?;
    Ok(IdxArray {
        dims,
        data: bytes[header_len..].to_vec(),
    })
}

/// Reads the whole of `path`, decompressing it if it starts with the gzip magic.
fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // A size hint for the raw case; gzip output is usually several times larger.
    let size = file.metadata().map(|m| m.len() as usize).unwrap_or(0);
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let is_gz = {
        let head = reader.fill_buf().map_err(|e| Error::io(path, e))?;
        head.len() >= 2 && head[..2] == GZIP_MAGIC
    };
    if !is_gz {
        let mut out = Vec::with_capacity(size);
        reader
            .read_to_end(&mut out)
            .map_err(|e| Error::io(path, e))?;
        return Ok(out);
    }
    let mut out = Vec::with_capacity(size.saturating_mul(4));
    MultiGzDecoder::new(reader)
        .read_to_end(&mut out)
        .map_err(|e| match e.kind() {
            io::ErrorKind::InvalidData
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::UnexpectedEof => {
                Error::format(path, format!("corrupt gzip stream: {e}"))
            }
            _ => Error::io(path, e),
        })?;
    Ok(out)
}

/// Reads an IDX file, raw or gzip-compressed (detected by the gzip magic `1f 8b`, not by
/// the extension). A missing or unreadable file is an [`Error::Io`]; a corrupt gzip
/// stream or a malformed IDX array is an [`Error::Format`].
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let mut bytes = read_maybe_gz(path)?;
    let source = path.display().to_string();
    let (dims, header_len) = parse_header(&bytes, &source)?;
    // Drop the header in place rather than copying the (possibly large) data.
    bytes.drain(..header_len);
    Ok(IdxArray { dims, data: bytes })
}
