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
}

async fn read_bytes(
    reader: &mut dyn Reader,
    cx: &LoadContext<'_>,
) -> Result<Vec<u8>, DialogueAssetError> {
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| DialogueAssetError::Io {
            path: cx.path().to_string(),
            source,
        })?;
    Ok(bytes)
}

async fn read_text(
    reader: &mut dyn Reader,
    cx: &LoadContext<'_>,
) -> Result<String, DialogueAssetError> {
    let bytes = read_bytes(reader, cx).await?;
    String::from_utf8(bytes).map_err(|_| DialogueAssetError::NotUtf8(cx.path().to_string()))
}

/// Loads [`Persona`]s from `*.persona.ron`.
#[derive(Default, TypePath)]
pub struct PersonaLoader;

impl AssetLoader for PersonaLoader {
    type Asset = Persona;
    type Settings = ();
    type Error = DialogueAssetError;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &(),
        cx: &mut LoadContext<'_>,
    ) -> Result<Persona, DialogueAssetError> {
        let text = read_text(reader, cx).await?;
        Ok(Persona::from_ron(&text, &cx.path().to_string())?)
    }

    fn extensions(&self) -> &[&str] {
        &["persona.ron"]
    }
}

/// Loads character cards (V2 and V3, `*.card.json` or a `*.card.png` with the card in its
/// text chunk) as [`Persona`]s: an NPC points at one as at a persona file.
#[derive(Default, TypePath)]
pub struct CardLoader;

impl AssetLoader for CardLoader {
    type Asset = Persona;
    type Settings = ();
    type Error = DialogueAssetError;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &(),
        cx: &mut LoadContext<'_>,
    ) -> Result<Persona, DialogueAssetError> {
        let path = cx.path().to_string();
        let bytes = read_bytes(reader, cx).await?;
        if bytes.len() > MAX_CARD_BYTES {
            return Err(CardError::Png {
                file: path,
                reason: format!("is over {MAX_CARD_BYTES} bytes"),
            }
            .into());
        }
        Ok(CharacterCard::persona_from_bytes(&bytes, &path)?)
    }

    fn extensions(&self) -> &[&str] {
        &["card.json", "card.png"]
    }
}

/// Loads [`Lorebook`](crate::lore::Lorebook)s from `*.lore.ron`, for
/// [`DialogueContext::lore`](super::DialogueContext) or a persona (copy the loaded book in).
#[derive(Default, TypePath)]
pub struct LoreLoader;

impl AssetLoader for LoreLoader {
    type Asset = crate::lore::Lorebook;
    type Settings = ();
    type Error = DialogueAssetError;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &(),
        cx: &mut LoadContext<'_>,
    ) -> Result<crate::lore::Lorebook, DialogueAssetError> {
        let text = read_text(reader, cx).await?;
        Ok(crate::lore::Lorebook::from_ron(
            &text,
            &cx.path().to_string(),
        )?)
    }

    fn extensions(&self) -> &[&str] {
        &["lore.ron"]
    }
}

/// Loads [`PromptTemplate`]s from `*.jinja`.
#[derive(Default, TypePath)]
pub struct PromptTemplateLoader;

impl AssetLoader for PromptTemplateLoader {
    type Asset = PromptTemplate;
    type Settings = ();
    type Error = DialogueAssetError;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &(),
        cx: &mut LoadContext<'_>,
    ) -> Result<PromptTemplate, DialogueAssetError> {
        let text = read_text(reader, cx).await?;
        Ok(PromptTemplate::new(&cx.path().to_string(), &text)?)
    }

    fn extensions(&self) -> &[&str] {
        &["jinja"]
    }
}

/// Loads [`StoryAsset`]s from `*.story.ron`.
#[derive(Default, TypePath)]
pub struct StoryLoader;

impl AssetLoader for StoryLoader {
    type Asset = StoryAsset;
    type Settings = ();
    type Error = DialogueAssetError;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &(),
        cx: &mut LoadContext<'_>,
    ) -> Result<StoryAsset, DialogueAssetError> {
        let text = read_text(reader, cx).await?;
        Ok(StoryAsset::from_ron(&text, &cx.path().to_string())?)
    }

    fn extensions(&self) -> &[&str] {
        &["story.ron"]
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
