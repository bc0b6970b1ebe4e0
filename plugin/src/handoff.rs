//! The hand-off between the audio thread and the rest of the plugin, born as a
//! pair: [`handoff`] returns the audio thread's end, which the player owns, and
//! the other threads' end, which the instance owns. Commands (and the clips
//! they carry) go to the audio thread on one wait-free queue; every clip the
//! audio thread lets go of comes back on the other, so its memory is freed off
//! the audio thread.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::capture::Capture;
use crate::clip::{Clip, GrowingClip};

/// Capacity of the queue to the audio thread, and of the return queue.
pub const QUEUE_CAPACITY: usize = 64;

/// Messages from the plugin's other threads to the audio thread.
pub enum AudioCommand {
    /// The take that Loop and MIDI play (`None`: nothing selected).
    Select(Option<Arc<Clip>>),
    /// Play a clip once from its start, on top of the rest.
    Preview(Arc<Clip>),
    /// Arm a recording (its buffers allocated already); replaces one armed.
    Capture(Box<Capture>),
    /// Stop the recording and hand it back unfinished.
    CancelCapture,
    /// Play a take while it is being made, from its start, as it grows.
    PreviewGrowing(Arc<GrowingClip>),
}

/// The audio thread's end: it pops commands and pushes back the clips it lets
/// go of. Both calls are wait-free.
pub struct PlayerEnd {
    commands: rtrb::Consumer<AudioCommand>,
    returns: rtrb::Producer<Arc<Clip>>,
    captures: rtrb::Producer<Box<Capture>>,
    growing: rtrb::Producer<Arc<GrowingClip>>,
}

impl PlayerEnd {
    /// Hands a growing clip back; gives it back when the queue is full.
    pub fn give_back_growing(&mut self, g: Arc<GrowingClip>) -> Result<(), Arc<GrowingClip>> {
        self.growing.push(g).map_err(|rtrb::PushError::Full(g)| g)
    }

    pub fn next_command(&mut self) -> Option<AudioCommand> {
        self.commands.pop().ok()
    }

    /// Sends a clip back to be dropped elsewhere; gives it back when the return
    /// queue is full.
    pub fn give_back(&mut self, clip: Arc<Clip>) -> Result<(), Arc<Clip>> {
        self.returns
            .push(clip)
            .map_err(|rtrb::PushError::Full(c)| c)
    }

    /// Hands a finished (or cancelled) recording back; gives it back when the
    /// queue is full.
    pub fn give_back_capture(&mut self, capture: Box<Capture>) -> Result<(), Box<Capture>> {
        self.captures
            .push(capture)
            .map_err(|rtrb::PushError::Full(c)| c)
    }
}

/// The other threads' end (editor, workers). Its locks are never shared with
/// the audio thread, which holds its own end.
pub struct ControlEnd {
    commands: Mutex<rtrb::Producer<AudioCommand>>,
    returns: Mutex<rtrb::Consumer<Arc<Clip>>>,
    captures: Mutex<rtrb::Consumer<Box<Capture>>>,
    growing: Mutex<rtrb::Consumer<Arc<GrowingClip>>>,
}

impl ControlEnd {
    /// Sends a command to the audio thread. Never blocks; a full queue drops it.
    pub fn send(&self, cmd: AudioCommand) -> bool {
        self.commands.lock().push(cmd).is_ok()
    }

    /// The next recording the audio thread handed back.
    pub fn pop_capture(&self) -> Option<Box<Capture>> {
        self.captures.lock().pop().ok()
    }

    /// Drops the clips the audio thread has let go of. Returns how many.
    pub fn collect_returns(&self) -> usize {
        let mut rx = self.returns.lock();
        let mut n = 0;
        while let Ok(clip) = rx.pop() {
            drop(clip);
            n += 1;
        }
        let mut growing = self.growing.lock();
        while let Ok(g) = growing.pop() {
            drop(g);
            n += 1;
        }
        n
    }

    /// The next clip the audio thread gave back, kept (for tests).
    #[cfg(test)]
    pub(crate) fn pop_returned(&self) -> Option<Arc<Clip>> {
        self.returns.lock().pop().ok()
    }

    /// Holds both locks (test hooks: `process()` must not wait on them).
    #[cfg(feature = "test-hooks")]
    #[allow(clippy::type_complexity)]
    pub(crate) fn lock_both(
        &self,
    ) -> (
        parking_lot::MutexGuard<'_, rtrb::Producer<AudioCommand>>,
        parking_lot::MutexGuard<'_, rtrb::Consumer<Arc<Clip>>>,
    ) {
        (self.commands.lock(), self.returns.lock())
    }
}

/// A new hand-off with room for `commands` commands and `returns` returned clips.
pub fn handoff(commands: usize, returns: usize) -> (PlayerEnd, ControlEnd) {
    let (commands_tx, commands_rx) = rtrb::RingBuffer::new(commands);
    let (returns_tx, returns_rx) = rtrb::RingBuffer::new(returns);
    let (captures_tx, captures_rx) = rtrb::RingBuffer::new(4);
    let (growing_tx, growing_rx) = rtrb::RingBuffer::new(8);
    (
        PlayerEnd {
            commands: commands_rx,
            returns: returns_tx,
            captures: captures_tx,
            growing: growing_tx,
        },
        ControlEnd {
            commands: Mutex::new(commands_tx),
            returns: Mutex::new(returns_rx),
            captures: Mutex::new(captures_rx),
            growing: Mutex::new(growing_rx),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::take::TakeKey;

    #[test]
    fn clips_travel_both_ways() {
        let (mut player, control) = handoff(2, 1);
        let clip = Clip::new(TakeKey(1), vec![0.0; 4], 1, 48_000, None, None);
        assert!(control.send(AudioCommand::Preview(clip.clone())));
        assert!(control.send(AudioCommand::Select(None)));
        assert!(!control.send(AudioCommand::Select(None)), "full: dropped");
        let Some(AudioCommand::Preview(got)) = player.next_command() else {
            panic!("the preview first")
        };
        assert!(player.give_back(got).is_ok());
        let again = player.give_back(clip.clone());
        assert!(again.is_err(), "the return queue holds one");
        assert_eq!(control.collect_returns(), 1);
        assert_eq!(Arc::strong_count(&clip), 2, "one returned and dropped");
    }
}
