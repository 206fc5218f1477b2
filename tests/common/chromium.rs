//! Headless Chromium (Debian's `chromium`; ops/test-all.sh installs it) for the tests of the
//! pages: a screenshot, the DOM after load, and a check that a screenshot is not blank.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The longest a page may take to load and render.
const DEADLINE: Duration = Duration::from_secs(90);

/// Runs chromium headless on `url` with `args`; its stdout. A profile of its own in `scratch`,
/// so parallel tests do not share one.
fn chromium(url: &str, scratch: &Path, args: &[String]) -> Vec<u8> {
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!(
            "--user-data-dir={}",
            scratch.join("profile").display()
        ))
        .args(args)
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium runs (Debian package `chromium`; ops/test-all.sh installs it)");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut out).map(|_| out)
    });
    let started = Instant::now();
    loop {
        match child.try_wait().expect("chromium status") {
            Some(status) => {
                assert!(status.success(), "chromium on {url}: {status}");
                break;
            }
            None if started.elapsed() > DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish {url} within {DEADLINE:?}");
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    reader.join().expect("reader").expect("chromium output")
}

/// The DOM of `url` once loaded, serialised.
pub fn dump_dom(url: &str, scratch: &Path) -> String {
    String::from_utf8(chromium(url, scratch, &["--dump-dom".to_owned()])).expect("utf-8 DOM")
}

/// A `width`×`height` PNG screenshot of `url` at `png`.
pub fn screenshot(url: &str, png: &Path, width: u32, height: u32, scratch: &Path) {
    let _ = std::fs::remove_file(png);
    chromium(
        url,
        scratch,
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={width},{height}"),
        ],
    );
    assert!(png.exists(), "chromium wrote no screenshot of {url}");
}

/// Decodes the PNG at `png` and asserts it is an image of the size asked for with many colours
/// (a blank or failed render is one or two colours).
pub fn assert_not_blank(png: &Path, width: u32, height: u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png).expect("screenshot"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut pixels).expect("a frame");
    assert_eq!(
        (info.width, info.height),
        (width, height),
        "{}",
        png.display()
    );
    let samples = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> =
        pixels[..info.buffer_size()].chunks(samples).collect();
    assert!(
        colours.len() > 16,
        "{} has {} colours: blank",
        png.display(),
        colours.len()
    );
}
