//! Asset loaders for personas (`*.persona.ron`, and character cards: `*.card.json`,
//! `*.card.png`), lorebooks (`*.lore.ron`), stories (`*.story.ron`) and prompt templates
//! (`*.jinja`), and whether a request's assets are ready.

use bevy::asset::io::Reader;
use bevy::asset::{AssetLoader, LoadContext, LoadState};
use bevy::prelude::*;

use bevy::ecs::system::SystemParam;

use crate::card::{CardError, CharacterCard, MAX_CARD_BYTES};
use crate::persona::Persona;
use crate::prompt::{PromptError, PromptTemplate};
use crate::ron_file::RonFileError;
use crate::story::StoryAsset;

/// Why a dialogue asset failed to load.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialogueAssetError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The asset path.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not UTF-8.
    #[error("{0} is not UTF-8 text")]
    NotUtf8(String),
    /// A persona or story file is malformed (the message names the file, line and field).
    #[error(transparent)]
    Data(#[from] RonFileError),
    /// A prompt template does not compile.
    #[error(transparent)]
    Prompt(#[from] PromptError),
    /// A character card is malformed or holds no card (the message names the file and field).
    #[error(transparent)]
    Card(#[from] CardError),
    /// The file is longer than its format's limit; it was not read past it.
    #[error("{path} is over {limit} bytes; dialogue files this large are refused")]
    TooLarge {
        /// The asset path.
        path: String,
        /// The limit in bytes.
        limit: usize,
    },
}

/// The largest persona, lorebook, story or template file read (a modder's file past it is
/// refused, not read to the end).
pub const MAX_DIALOGUE_FILE_BYTES: usize = 4 << 20;

/// A dialogue file format: which files it reads and how their bytes become an asset. One
/// [`DialogueLoader`] reads every format the same way: at most [`DialogueFormat::MAX_BYTES`]
/// (a file past it is refused unread), then [`DialogueFormat::parse`].
pub trait DialogueFormat: TypePath + Send + Sync + 'static {
    /// The asset it produces.
    type Asset: Asset;
    /// File extensions, without the leading dot.
    const EXTENSIONS: &'static [&'static str];
    /// The largest file read.
    const MAX_BYTES: usize = MAX_DIALOGUE_FILE_BYTES;
    /// Parses a file; `path` names it in errors.
    fn parse(bytes: Vec<u8>, path: &str) -> Result<Self::Asset, DialogueAssetError>;
}

/// Reads a [`DialogueFormat`]: the crate registers one for each of its formats.
#[derive(TypePath)]
pub struct DialogueLoader<F: DialogueFormat>(std::marker::PhantomData<F>);

impl<F: DialogueFormat> Default for DialogueLoader<F> {
    fn default() -> Self {
        Self(std::marker::PhantomData)
    }
}

impl<F: DialogueFormat> AssetLoader for DialogueLoader<F> {
    type Asset = F::Asset;
    type Settings = ();
    type Error = DialogueAssetError;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &(),
        cx: &mut LoadContext<'_>,
    ) -> Result<F::Asset, DialogueAssetError> {
        use bevy::tasks::futures_lite::AsyncReadExt;
        let path = cx.path().to_string();
        let mut bytes = Vec::new();
        // One byte past the cap tells a file that is too long without reading it all (a
        // path that names a device never ends).
        reader
            .take(F::MAX_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|source| DialogueAssetError::Io {
                path: path.clone(),
                source,
            })?;
        if bytes.len() > F::MAX_BYTES {
            return Err(DialogueAssetError::TooLarge {
                path,
                limit: F::MAX_BYTES,
            });
        }
        F::parse(bytes, &path)
    }

    fn extensions(&self) -> &[&str] {
        F::EXTENSIONS
    }
}

fn utf8(bytes: Vec<u8>, path: &str) -> Result<String, DialogueAssetError> {
    String::from_utf8(bytes).map_err(|_| DialogueAssetError::NotUtf8(path.to_owned()))
}

/// [`Persona`]s from `*.persona.ron`.
#[derive(TypePath)]
pub struct PersonaFormat;

impl DialogueFormat for PersonaFormat {
    type Asset = Persona;
    const EXTENSIONS: &'static [&'static str] = &["persona.ron"];
    fn parse(bytes: Vec<u8>, path: &str) -> Result<Persona, DialogueAssetError> {
        Ok(Persona::from_ron(&utf8(bytes, path)?, path)?)
    }
}

/// Character cards (V2 and V3, `*.card.json` or a `*.card.png` with the card in its text
/// chunk) as [`Persona`]s: an NPC points at one as at a persona file.
#[derive(TypePath)]
pub struct CardFormat;

impl DialogueFormat for CardFormat {
    type Asset = Persona;
    const EXTENSIONS: &'static [&'static str] = &["card.json", "card.png"];
    const MAX_BYTES: usize = MAX_CARD_BYTES;
    fn parse(bytes: Vec<u8>, path: &str) -> Result<Persona, DialogueAssetError> {
        Ok(CharacterCard::persona_from_bytes(&bytes, path)?)
    }
}

/// [`Lorebook`](crate::lore::Lorebook)s from `*.lore.ron`, for
/// [`DialogueContext::lore`](super::DialogueContext) or a persona (copy the loaded book in).
#[derive(TypePath)]
pub struct LoreFormat;

impl DialogueFormat for LoreFormat {
    type Asset = crate::lore::Lorebook;
    const EXTENSIONS: &'static [&'static str] = &["lore.ron"];
    fn parse(bytes: Vec<u8>, path: &str) -> Result<Self::Asset, DialogueAssetError> {
        Ok(crate::lore::Lorebook::from_ron(&utf8(bytes, path)?, path)?)
    }
}

/// [`PromptTemplate`]s from `*.jinja`.
#[derive(TypePath)]
pub struct PromptTemplateFormat;

impl DialogueFormat for PromptTemplateFormat {
    type Asset = PromptTemplate;
    const EXTENSIONS: &'static [&'static str] = &["jinja"];
    fn parse(bytes: Vec<u8>, path: &str) -> Result<PromptTemplate, DialogueAssetError> {
        Ok(PromptTemplate::new(path, &utf8(bytes, path)?)?)
    }
}

/// [`StoryAsset`]s from `*.story.ron`.
#[derive(TypePath)]
pub struct StoryFormat;

impl DialogueFormat for StoryFormat {
    type Asset = StoryAsset;
    const EXTENSIONS: &'static [&'static str] = &["story.ron"];
    fn parse(bytes: Vec<u8>, path: &str) -> Result<StoryAsset, DialogueAssetError> {
        Ok(StoryAsset::from_ron(&utf8(bytes, path)?, path)?)
    }
}

/// Registers the dialogue assets and their loaders, and the built-in prompt templates.
pub(crate) struct AssetsPlugin;

impl Plugin for AssetsPlugin {
    fn build(&self, app: &mut App) {
        app.init_asset::<Persona>()
            .init_asset::<PromptTemplate>()
            .init_asset::<StoryAsset>()
            .init_asset::<crate::lore::Lorebook>()
            .init_asset_loader::<DialogueLoader<PersonaFormat>>()
            .init_asset_loader::<DialogueLoader<CardFormat>>()
            .init_asset_loader::<DialogueLoader<LoreFormat>>()
            .init_asset_loader::<DialogueLoader<PromptTemplateFormat>>()
            .init_asset_loader::<DialogueLoader<StoryFormat>>()
            .init_resource::<BuiltinPrompts>();
    }
}

/// Whether a request's asset can be used yet.
pub(crate) enum Ready<'a, T> {
    Yes(&'a T),
    NotYet,
    Failed(String),
}

impl<'a, T> Ready<'a, T> {
    /// The asset, `None` while it loads, or the error `fail` makes of why it cannot load.
    pub(crate) fn or_fail<E>(self, fail: impl FnOnce(String) -> E) -> Result<Option<&'a T>, E> {
        match self {
            Ready::Yes(t) => Ok(Some(t)),
            Ready::NotYet => Ok(None),
            Ready::Failed(e) => Err(fail(e)),
        }
    }
}

/// The asset behind `handle`, or why not (yet).
pub(crate) fn asset_ready<'a, T: Asset>(
    server: &AssetServer,
    assets: &'a Assets<T>,
    handle: &Handle<T>,
) -> Ready<'a, T> {
    if let Some(asset) = assets.get(handle) {
        return Ready::Yes(asset);
    }
    match server.get_load_state(handle) {
        Some(LoadState::Failed(e)) => Ready::Failed(e.to_string()),
        // Neither loaded nor known to the server: a handle made by hand that was removed.
        None => Ready::Failed(format!("asset {:?} does not exist", handle.id())),
        _ => Ready::NotYet,
    }
}

/// The prompts used when an NPC or a narrator names none of its own.
#[derive(Resource)]
pub(crate) struct BuiltinPrompts {
    pub(crate) npc: PromptTemplate,
    pub(crate) narrator: PromptTemplate,
    pub(crate) action: PromptTemplate,
}

impl Default for BuiltinPrompts {
    fn default() -> Self {
        Self {
            npc: PromptTemplate::default_npc(),
            narrator: PromptTemplate::default_narrator(),
            action: PromptTemplate::default_action(),
        }
    }
}

/// Every dialogue asset a request may need.
#[derive(SystemParam)]
pub(crate) struct DialogueAssets<'w> {
    pub(crate) personas: Res<'w, Assets<Persona>>,
    pub(crate) prompts: Res<'w, Assets<PromptTemplate>>,
    pub(crate) stories: Res<'w, Assets<StoryAsset>>,
    pub(crate) builtin: Res<'w, BuiltinPrompts>,
    pub(crate) server: Res<'w, AssetServer>,
}

impl DialogueAssets<'_> {
    /// The persona behind `handle`.
    pub(crate) fn persona(&self, handle: &Handle<Persona>) -> Ready<'_, Persona> {
        asset_ready(&self.server, &self.personas, handle)
    }

    /// The story behind `handle`.
    pub(crate) fn story(&self, handle: &Handle<StoryAsset>) -> Ready<'_, StoryAsset> {
        asset_ready(&self.server, &self.stories, handle)
    }

    /// The template behind `handle`, or `builtin` when there is none.
    pub(crate) fn prompt<'a>(
        &'a self,
        handle: Option<&Handle<PromptTemplate>>,
        builtin: &'a PromptTemplate,
    ) -> Ready<'a, PromptTemplate> {
        match handle {
            None => Ready::Yes(builtin),
            Some(h) => asset_ready(&self.server, &self.prompts, h),
        }
    }
}
