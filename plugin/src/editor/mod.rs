//! The editor: nice-plug-egui's window around [`view::draw`]. The window is
//! drawn by `view` (status, generate, footer), `settings` (prompt, model and
//! sampling) and `takes` (the list of takes); what a click asks for is an
//! [`view::EditorAction`], applied to the instance after the frame is drawn.
//! `drag` starts the system's drag of a take's file, per platform.
//!
//! nice-plug-egui's editor state is not persisted, and the plugin's `editor()`
//! is asked for before the host restores the project, so the window's size
//! lives in its own persisted field and each opening builds the egui editor at
//! that size.

use std::error::Error;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use nice_plug::context::gui::GuiContext;
use nice_plug::editor::dpi::{LogicalSize, NativeSize, Size};
use nice_plug::editor::SpawnedEditor;
use nice_plug::prelude::*;
use nice_plug_egui::{
    create_egui_editor, EguiEditor, EguiEditorHandle, EguiEditorState, EguiNiceSettings,
    NiceEguiApp, RepaintNotifier,
};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::instance::Instance;
use crate::params::PromptloopParams;
use crate::player::PlayMode;

pub mod drag;
mod settings;
mod takes;
pub mod view;

use drag::{DragEnded, NativeWindow, ReleaseAfterDrag};
pub use view::{EditorModel, ParamWrite};

/// Set by the standalone app's SIGINT handler: open editors close, which ends
/// the app (nice-plug's own handler only acts while no editor is open).
static QUIT: AtomicBool = AtomicBool::new(false);
/// Editor windows open in this process.
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Closes every open editor; with none open, ends the process (the standalone
/// app's SIGINT).
pub fn request_quit() {
    QUIT.store(true, Ordering::Release);
    if OPEN.load(Ordering::Acquire) == 0 {
        std::process::exit(0);
    }
}

/// The window's logical size, saved with the project under `editor-size`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct WindowSize {
    pub width: u32,
    pub height: u32,
}

/// A sensible first size; the window is resizable.
pub fn default_size() -> WindowSize {
    WindowSize {
        width: 620,
        height: 760,
    }
}

const MIN_SIZE: (f64, f64) = (460.0, 420.0);

pub struct PromptloopEditor {
    instance: Arc<Instance>,
    params: Arc<PromptloopParams>,
    size: Arc<RwLock<WindowSize>>,
    open: Mutex<Option<EguiEditor<App>>>,
}

/// The editor for an instance.
pub fn create(
    instance: Arc<Instance>,
    params: Arc<PromptloopParams>,
    size: Arc<RwLock<WindowSize>>,
) -> Option<PromptloopEditor> {
    Some(PromptloopEditor {
        instance,
        params,
        size,
        open: Mutex::new(None),
    })
}

fn logical(size: WindowSize) -> Size {
    Size::Logical(LogicalSize::new(
        (size.width as f64).max(MIN_SIZE.0),
        (size.height as f64).max(MIN_SIZE.1),
    ))
}

fn resize_hint() -> ResizeHint {
    ResizeHint {
        can_resize: true,
        ..ResizeHint::default()
    }
}

impl Editor for PromptloopEditor {
    type Handle = EguiEditorHandle;

    fn spawn(
        &self,
        parent: Option<ParentWindowHandle>,
        wait_for_parent: bool,
        fallback_scale_factor: Option<f64>,
        gui_context: GuiContext,
        host: Option<nice_plug::editor::HostMethods>,
    ) -> Result<SpawnedEditor<Self::Handle>, Box<dyn Error>> {
        // The zoom can be set for screenshots and for checking large scales.
        let zoom = std::env::var("PROMPTLOOP_EDITOR_ZOOM")
            .ok()
            .and_then(|z| z.parse::<f32>().ok())
            .filter(|z| (0.5..=4.0).contains(z))
            .unwrap_or(1.0);
        // egui-baseview scales the logical size by the zoom itself.
        let state = EguiEditorState::from_size(logical(*self.size.read()), zoom);
        let app = App {
            instance: self.instance.clone(),
            params: self.params.clone(),
            size: self.size.clone(),
            model: None,
        };
        let settings = EguiNiceSettings::new()
            .with_tile("Promptloop")
            .with_resize_hint(resize_hint())
            // Progress and the playhead move without input.
            .with_repaint_poll_interval(std::time::Duration::from_millis(50));
        let editor = create_egui_editor(state, RepaintNotifier::new(), settings, app)
            .ok_or("cannot create the editor")?;
        let spawned = editor.spawn(
            parent,
            wait_for_parent,
            fallback_scale_factor,
            gui_context,
            host,
        )?;
        *self.open.lock() = Some(editor);
        Ok(spawned)
    }

    fn size(&self) -> NativeSize<u32> {
        match self.open.lock().as_ref() {
            Some(e) => e.size(),
            None => NativeSize::from_size(logical(*self.size.read()), 1.0),
        }
    }

    fn resize_hint(&self) -> ResizeHint {
        resize_hint()
    }

    fn track_info_updated(&self, info: TrackInfo) {
        if let Some(e) = self.open.lock().as_ref() {
            e.track_info_updated(info);
        }
    }
}

/// Sets parameters through the host, as a gesture.
struct HostParams {
    context: GuiContext,
    params: Arc<PromptloopParams>,
}

impl ParamWrite for HostParams {
    fn set_mode(&self, mode: PlayMode) {
        let setter = self.context.param_setter();
        setter.begin_set_parameter(&self.params.mode);
        setter.set_parameter(&self.params.mode, mode);
        setter.end_set_parameter(&self.params.mode);
    }

    fn mode(&self) -> PlayMode {
        self.params.mode.value()
    }
}

struct App {
    instance: Arc<Instance>,
    params: Arc<PromptloopParams>,
    size: Arc<RwLock<WindowSize>>,
    model: Option<EditorModel>,
}

impl NiceEguiApp for App {
    fn build(
        &mut self,
        egui_ctx: egui::Context,
        nice_gui_ctx: GuiContext,
        frame: &mut nice_plug_egui::Frame,
    ) -> Result<(), nice_plug_egui::baseview::HandlerError> {
        OPEN.fetch_add(1, Ordering::AcqRel);
        egui_ctx.set_theme(egui::Theme::Dark);
        let params = HostParams {
            context: nice_gui_ctx,
            params: self.params.clone(),
        };
        let ended = DragEnded::default();
        egui_ctx.add_plugin(ReleaseAfterDrag::new(ended.clone()));
        self.model = Some(EditorModel::new(
            self.instance.clone(),
            Box::new(params),
            drag::platform_drag(NativeWindow::of(frame.baseview_window()), ended),
        ));
        Ok(())
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut nice_plug_egui::Frame) {
        if QUIT.load(Ordering::Acquire) {
            frame.baseview_window().request_close();
        }
        if let Some(model) = self.model.as_mut() {
            view::draw(ui, model);
        }
        // Progress and the playhead move without input: keep drawing.
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_millis(50));
    }

    fn editor_closed(&mut self) {
        OPEN.fetch_sub(1, Ordering::AcqRel);
    }

    fn resized(&mut self, new_size: nice_plug_egui::baseview::WindowSize) {
        let l = new_size.logical;
        *self.size.write() = WindowSize {
            width: l.width.round().max(1.0) as u32,
            height: l.height.round().max(1.0) as u32,
        };
    }
}
