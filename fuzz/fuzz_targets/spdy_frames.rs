//! Feeds arbitrary bytes to the kubelet API's SPDY/3.1 frame decoder, whole and split at an
//! arbitrary point as a connection would deliver them: it may refuse, never panic, and whatever it
//! decodes must encode again and decode to the same frame.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tke_kubelet_api::spdy::Codec;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut codec = Codec::new();
    let mut buffer = BytesMut::from(&data[..split]);
    let mut frames = Vec::new();
    let mut failed = false;
    for rest in [&data[split..], &[][..]] {
        loop {
            match codec.decode(&mut buffer) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    let _ = err.to_string();
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            break;
        }
        buffer.extend_from_slice(rest);
    }
    // Re-encode through a fresh pair of contexts: the same frames come back.
    let mut sender = Codec::new();
    let mut receiver = Codec::new();
    let mut wire = BytesMut::new();
    for frame in &frames {
        if sender.encode(frame, &mut wire).is_err() {
            return;
        }
    }
    for frame in &frames {
        assert_eq!(receiver.decode(&mut wire).ok().flatten().as_ref(), Some(frame));
    }
});
