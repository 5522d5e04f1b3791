//! The tar format as far as bundles need it: plain ustar entries written
//! with zero times and owners (so one cache gives one bundle, byte for
//! byte), and read back tolerating what other tools write (GNU long
//! names, pax paths and sizes, base-256 sizes, directories, `./`).

use std::io::{self, Read, Write};

const BLOCK: usize = 512;
/// Long names and pax records are held in memory: bound them.
const MAX_META: u64 = 64 * 1024;
/// The largest size 11 octal digits hold; larger ones go base-256.
const MAX_OCTAL: u64 = (1 << 33) - 1;

#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("not a tar archive, or a damaged one: {0}")]
    Corrupt(&'static str),
    #[error("the archive ends in the middle of {0}")]
    Truncated(String),
}

pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> TarWriter<W> {
        TarWriter { out }
    }

    /// Appends a regular file of exactly `len` bytes read from `body`.
    pub fn append(&mut self, path: &str, len: u64, body: &mut impl Read) -> io::Result<()> {
        self.out.write_all(&header(path, len)?)?;
        let copied = io::copy(&mut body.take(len), &mut self.out)?;
        if copied != len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{path}: {copied} of {len} bytes could be read"),
            ));
        }
        self.out.write_all(&[0; BLOCK][..padding(len)])
    }

    /// Writes the end-of-archive marker and hands back the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn padding(len: u64) -> usize {
    (BLOCK - (len % BLOCK as u64) as usize) % BLOCK
}

fn header(path: &str, len: u64) -> io::Result<[u8; BLOCK]> {
    if path.len() > 100 || path.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tar path too long: {path}"),
        ));
    }
    let mut h = [0u8; BLOCK];
    h[..path.len()].copy_from_slice(path.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if len <= MAX_OCTAL {
        h[124..136].copy_from_slice(format!("{len:011o}\0").as_bytes());
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&len.to_be_bytes());
    }
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum = checksum(&h);
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Ok(h)
}

/// The header's byte sum with its own checksum field read as spaces.
fn checksum(h: &[u8; BLOCK]) -> u64 {
    h.iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum()
}

fn octal(field: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(field).ok()?;
    let text = text.trim_matches(|c: char| c == '\0' || c == ' ');
    if text.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(text, 8).ok()
}

fn size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        // GNU base-256: the rest of the field, big-endian.
        return field[1..]
            .iter()
            .try_fold(0u64, |n, &b| n.checked_mul(256).map(|n| n + u64::from(b)));
    }
    octal(field)
}

fn text(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// One regular file in the archive; its bytes are read with
/// [`TarReader::body`] before asking for the next entry.
#[derive(Debug)]
pub struct Entry {
    /// With any leading `./` removed.
    pub path: String,
    pub len: u64,
}

pub struct TarReader<R: Read> {
    input: R,
    /// Body bytes of the current entry not read yet, then its padding.
    remaining: u64,
    padding: u64,
}

impl<R: Read> TarReader<R> {
    pub fn new(input: R) -> TarReader<R> {
        TarReader {
            input,
            remaining: 0,
            padding: 0,
        }
    }

    /// The next regular file, skipping directories, links and metadata;
    /// `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<Entry>, TarError> {
        self.skip_rest()?;
        let mut long_name: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        loop {
            let mut h = [0u8; BLOCK];
            if !read_block(&mut self.input, &mut h)? {
                // Some writers omit the end marker; the end of input is
                // the end of the archive only between entries.
                return Ok(None);
            }
            if h.iter().all(|&b| b == 0) {
                return Ok(None);
            }
            if octal(&h[148..156]) != Some(checksum(&h)) {
                return Err(TarError::Corrupt("header checksum does not match"));
            }
            let mut len = size(&h[124..136]).ok_or(TarError::Corrupt("bad size field"))?;
            let mut path = text(&h[..100]);
            if &h[257..262] == b"ustar" {
                let prefix = text(&h[345..500]);
                if !prefix.is_empty() {
                    path = format!("{prefix}/{path}");
                }
            }
            self.remaining = len;
            self.padding = padding(len) as u64;
            match h[156] {
                b'L' => long_name = Some(self.read_meta(&path)?.trim_end_matches('\0').to_owned()),
                b'x' => {
                    let records = self.read_meta(&path)?;
                    for (key, value) in pax_records(&records) {
                        match key {
                            "path" => long_name = Some(value.to_owned()),
                            "size" => pax_size = value.parse().ok(),
                            _ => {}
                        }
                    }
                }
                b'0' | b'\0' | b'7' => {
                    if let Some(n) = pax_size.take() {
                        len = n;
                        self.remaining = n;
                        self.padding = padding(n) as u64;
                    }
                    let path = long_name.take().unwrap_or(path);
                    let path = path.trim_start_matches("./").to_owned();
                    return Ok(Some(Entry { path, len }));
                }
                // Directories, links, global pax headers, devices.
                _ => {
                    long_name = None;
                    pax_size = None;
                    self.skip_rest()?;
                }
            }
        }
    }

    /// The current entry's bytes.
    pub fn body(&mut self) -> EntryBody<'_, R> {
        EntryBody { tar: self }
    }

    fn read_meta(&mut self, path: &str) -> Result<String, TarError> {
        if self.remaining > MAX_META {
            return Err(TarError::Corrupt("metadata entry too large"));
        }
        let mut bytes = Vec::new();
        self.body().read_to_end(&mut bytes)?;
        if (bytes.len() as u64) < self.remaining {
            return Err(TarError::Truncated(path.to_owned()));
        }
        self.skip_rest()?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn skip_rest(&mut self) -> Result<(), TarError> {
        let skip = self.remaining + self.padding;
        let skipped = io::copy(&mut (&mut self.input).take(skip), &mut io::sink())?;
        if skipped != skip {
            return Err(TarError::Truncated("an entry".to_owned()));
        }
        self.remaining = 0;
        self.padding = 0;
        Ok(())
    }
}

/// Reads a whole block; `false` at a clean end of input.
fn read_block(input: &mut impl Read, block: &mut [u8; BLOCK]) -> Result<bool, TarError> {
    let mut filled = 0;
    while filled < BLOCK {
        match input.read(&mut block[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(TarError::Truncated("a header".to_owned())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(true)
}

/// `"<len> <key>=<value>\n"` records.
fn pax_records(records: &str) -> impl Iterator<Item = (&str, &str)> {
    records.lines().filter_map(|line| {
        let (_, kv) = line.split_once(' ')?;
        kv.split_once('=')
    })
}

/// Reads one entry's bytes and no further; a short archive is an error,
/// not an early end of the entry.
pub struct EntryBody<'a, R: Read> {
    tar: &'a mut TarReader<R>,
}

impl<R: Read> Read for EntryBody<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tar.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.tar.remaining).unwrap_or(usize::MAX));
        let n = self.tar.input.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends in the middle of an entry",
            ));
        }
        self.tar.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(archive: &[u8]) -> Result<Vec<(String, Vec<u8>)>, TarError> {
        let mut tar = TarReader::new(archive);
        let mut out = Vec::new();
        while let Some(e) = tar.next_entry()? {
            let mut bytes = Vec::new();
            tar.body().read_to_end(&mut bytes)?;
            out.push((e.path, bytes));
        }
        Ok(out)
    }

    #[test]
    fn what_is_written_reads_back() {
        let mut w = TarWriter::new(Vec::new());
        w.append("oci-layout", 3, &mut &b"abc"[..]).expect("append");
        w.append("blobs/sha256/x", 0, &mut &b""[..])
            .expect("append");
        let big = vec![7u8; 1000];
        w.append("big", 1000, &mut &big[..]).expect("append");
        let archive = w.finish().expect("finish");
        assert_eq!(archive.len() % BLOCK, 0);
        let got = entries(&archive).expect("read");
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], ("oci-layout".to_owned(), b"abc".to_vec()));
        assert_eq!(got[1].1.len(), 0);
        assert_eq!(got[2].1, big);
    }

    #[test]
    fn reads_what_gnu_tar_writes() {
        // `tar --format=gnu` with a long name, a directory and `./`.
        let long = format!("./blobs/sha256/{}", "a".repeat(120));
        let mut archive = Vec::new();
        let mut dir = header("./blobs/", 0).expect("header");
        dir[156] = b'5';
        let sum = checksum(&dir);
        dir[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        archive.extend_from_slice(&dir);
        let mut name = header("././@LongLink", long.len() as u64 + 1).expect("header");
        name[156] = b'L';
        let sum = checksum(&name);
        name[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        archive.extend_from_slice(&name);
        let mut body = long.clone().into_bytes();
        body.push(0);
        body.resize(body.len() + padding(body.len() as u64), 0);
        archive.extend_from_slice(&body);
        let mut w = TarWriter::new(archive);
        w.append("truncated-name", 2, &mut &b"hi"[..])
            .expect("append");
        let got = entries(&w.finish().expect("finish")).expect("read");
        assert_eq!(got, vec![(long[2..].to_owned(), b"hi".to_vec())]);
    }

    #[test]
    fn damage_is_an_error_not_a_short_file() {
        let mut w = TarWriter::new(Vec::new());
        w.append("f", 600, &mut &[1u8; 600][..]).expect("append");
        let archive = w.finish().expect("finish");
        let mut flipped = archive.clone();
        flipped[10] ^= 1;
        assert!(matches!(entries(&flipped), Err(TarError::Corrupt(_))));
        assert!(entries(&archive[..BLOCK + 100]).is_err());
        assert!(entries(b"not a tar at all, just some text").is_err());
    }

    #[test]
    fn sizes_over_8_gib_use_base_256() {
        let h = header("huge", 10 << 30).expect("header");
        assert_eq!(size(&h[124..136]), Some(10 << 30));
        assert_eq!(octal(&h[148..156]), Some(checksum(&h)));
    }
}
