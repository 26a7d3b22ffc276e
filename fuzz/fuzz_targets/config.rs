//! The `termwatch run` configuration reader on any text. It never panics,
//! and its errors never show a value: a secret (a `sasl.password` with `=`
//! in it, as base64 has) is placed in the file, before or after the fuzzed
//! text, as a plain or a multi-line string, and no error may contain any
//! part of it.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use termwatch_config::Config;

const SECRET_HEAD: &str = "hunter2";
const SECRET_TAIL: &str = "c2VjcmV0";

fuzz_target!(|data: &[u8]| {
    let Some((&how, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    if text.contains(SECRET_HEAD) || text.contains(SECRET_TAIL) {
        // An error may name a key of the fuzzed text.
        return;
    }
    let secret = format!("{SECRET_HEAD}={SECRET_TAIL}");
    let line = if how & 1 == 0 {
        format!("\"sasl.password\" = \"{secret}\"")
    } else {
        format!("\"sasl.password\" = \"\"\"\n{secret}\n\"\"\"")
    };
    let planted = format!("[kafka.properties]\n{line}\n");
    let file = if how & 2 == 0 { format!("{text}\n{planted}") } else { format!("{planted}{text}") };
    for file in [text, file.as_str()] {
        if let Err(e) = Config::from_text(Some((Path::new("fuzz.toml"), file)), []) {
            let message = format!("{e:#}");
            assert!(
                !message.contains(SECRET_HEAD) && !message.contains(SECRET_TAIL),
                "an error shows the secret: {message}"
            );
        }
    }
});
