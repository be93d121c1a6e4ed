//! Load progress: a reader that reports how far through the model file loading has read.

use std::io::{Read, Seek, SeekFrom};

use super::error::{EngineError, Result};

/// Wraps the reader given to [`Engine::from_reader`](super::Engine::from_reader) and calls
/// `on_progress` with the fraction of the file read so far, in steps of at least 5 %.
///
/// The fraction stays below 1 (at most 0.99) while loading runs; the caller reports 1 once
/// the engine is built.
///
/// ```no_run
/// use std::fs::File;
/// use std::io::BufReader;
///
/// use bevy_llm_dialogue::engine::{Engine, EngineConfig, ProgressReader};
///
/// let path = "assets/models/SmolLM2-135M-Instruct.Q4_1.gguf";
/// let file = BufReader::new(File::open(path).expect("model file"));
/// let reader = ProgressReader::new(file, |f| tracing::info!("loading: {:.0} %", f * 100.0))?;
/// let engine = Engine::from_reader(reader, path, EngineConfig::default())?;
/// # Ok::<(), bevy_llm_dialogue::engine::EngineError>(())
/// ```
pub struct ProgressReader<R, F> {
    inner: R,
    len: u64,
    pos: u64,
    last: f32,
    on_progress: F,
}

impl<R: Read + Seek, F: FnMut(f32)> ProgressReader<R, F> {
    /// Wraps `inner`, whose length is found by seeking to its end (it is left at the start).
    pub fn new(mut inner: R, on_progress: F) -> Result<Self> {
        let io = |e: std::io::Error| EngineError::InvalidGguf {
            file: "model".into(),
            reason: e.to_string(),
        };
        let len = inner.seek(SeekFrom::End(0)).map_err(io)?;
        inner.seek(SeekFrom::Start(0)).map_err(io)?;
        Ok(Self {
            inner,
            len: len.max(1),
            pos: 0,
            last: 0.0,
            on_progress,
        })
    }
}

impl<R, F: FnMut(f32)> ProgressReader<R, F> {
    fn tick(&mut self) {
        // Loading reads most of the file once, in order; stop short of 1 until it is done.
        let fraction = (self.pos as f32 / self.len as f32).min(0.99);
        if fraction - self.last >= 0.05 {
            self.last = fraction;
            (self.on_progress)(fraction);
        }
    }
}

impl<R: Read, F: FnMut(f32)> Read for ProgressReader<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        self.tick();
        Ok(n)
    }
}

impl<R: Seek, F> Seek for ProgressReader<R, F> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        // Progress counts bytes read, not seek positions (the loader seeks to the end to
        // learn the file size).
        self.inner.seek(to)
    }
}

impl<R: std::fmt::Debug, F> std::fmt::Debug for ProgressReader<R, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressReader")
            .field("inner", &self.inner)
            .field("len", &self.len)
            .field("pos", &self.pos)
            .field("last", &self.last)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    #[test]
    fn reports_in_steps_of_five_percent_and_never_one() {
        let mut seen = Vec::new();
        let mut reader = ProgressReader::new(Cursor::new(vec![0u8; 1000]), |f| seen.push(f))
            .expect("a cursor seeks");
        reader.seek(SeekFrom::End(0)).expect("a cursor seeks");
        reader.seek(SeekFrom::Start(0)).expect("a cursor seeks");
        let mut buf = [0u8; 10];
        while reader.read(&mut buf).expect("a cursor reads") > 0 {}
        drop(reader);
        assert!((10..=20).contains(&seen.len()), "{seen:?}");
        assert!(seen[0] >= 0.05, "{seen:?}");
        assert!(seen.windows(2).all(|w| w[1] - w[0] >= 0.05), "{seen:?}");
        assert!(seen.iter().all(|&f| f <= 0.99), "{seen:?}");
    }
}
