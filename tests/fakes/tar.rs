//! Reads the regular files of a tar archive (ustar, with GNU long names and PAX paths).

use std::collections::BTreeMap;

fn octal(field: &[u8]) -> usize {
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    usize::from_str_radix(text.trim(), 8).unwrap_or(0)
}

fn cstr(field: &[u8]) -> String {
    String::from_utf8_lossy(&field[..field.iter().position(|b| *b == 0).unwrap_or(field.len())])
        .to_string()
}

/// Path → content of every regular file.
pub fn files(tar: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut i = 0;
    let mut long_name: Option<String> = None;
    while i + 512 <= tar.len() {
        let h = &tar[i..i + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let size = octal(&h[124..136]);
        let kind = h[156];
        let data = &tar[i + 512..(i + 512 + size).min(tar.len())];
        let mut name = cstr(&h[0..100]);
        let prefix = cstr(&h[345..500]);
        if !prefix.is_empty() {
            name = format!("{prefix}/{name}");
        }
        match kind {
            b'L' => long_name = Some(cstr(data)),
            b'x' => {
                let text = String::from_utf8_lossy(data);
                for rec in text.lines() {
                    if let Some((_, kv)) = rec.split_once(' ')
                        && let Some(p) = kv.strip_prefix("path=")
                    {
                        long_name = Some(p.to_string());
                    }
                }
            }
            b'0' | 0 => {
                out.insert(long_name.take().unwrap_or(name), data.to_vec());
            }
            _ => {
                long_name = None;
            }
        }
        i += 512 + size.div_ceil(512) * 512;
    }
    out
}
