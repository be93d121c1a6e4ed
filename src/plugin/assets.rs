//! Asset loaders for personas (`*.persona.ron`) and prompt templates (`*.jinja`).

use bevy::asset::io::Reader;
use bevy::asset::{AssetLoader, LoadContext};
use bevy::reflect::TypePath;

use crate::persona::{Persona, PersonaError};
use crate::prompt::{PromptError, PromptTemplate};
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
    /// A persona is malformed.
    #[error(transparent)]
    Persona(#[from] PersonaError),
    /// A prompt template does not compile.
    #[error(transparent)]
    Prompt(#[from] PromptError),
}

async fn read_text(
    reader: &mut dyn Reader,
    cx: &LoadContext<'_>,
) -> Result<String, DialogueAssetError> {
    let path = cx.path().to_string();
    let mut bytes = Vec::new();
    reader
        .read_to_end(&mut bytes)
        .await
        .map_err(|source| DialogueAssetError::Io {
            path: path.clone(),
            source,
        })?;
    String::from_utf8(bytes).map_err(|_| DialogueAssetError::NotUtf8(path))
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
