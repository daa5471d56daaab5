//! The names tenant policies use for what a request can ask for: experiences and feature
//! switches. They belong to the request model (each names members of it); the policy decides
//! about them, and the settings are validated against them.

/// The experiences a policy can allow. GetDashboardEmbedUrl embeds the `Dashboard` experience.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExperienceKind {
    Dashboard,
    DashboardVisual,
    QuickSightConsole,
    QSearchBar,
    GenerativeQnA,
    QuickChat,
}

impl ExperienceKind {
    pub const ALL: [ExperienceKind; 6] = [
        ExperienceKind::Dashboard,
        ExperienceKind::DashboardVisual,
        ExperienceKind::QuickSightConsole,
        ExperienceKind::QSearchBar,
        ExperienceKind::GenerativeQnA,
        ExperienceKind::QuickChat,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ExperienceKind::Dashboard => "Dashboard",
            ExperienceKind::DashboardVisual => "DashboardVisual",
            ExperienceKind::QuickSightConsole => "QuickSightConsole",
            ExperienceKind::QSearchBar => "QSearchBar",
            ExperienceKind::GenerativeQnA => "GenerativeQnA",
            ExperienceKind::QuickChat => "QuickChat",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// The feature switches a policy can deny. A denied feature may not be *enabled* by a request;
/// requests that leave it out or disable it pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feature {
    SharedView,
    StatePersistence,
    Bookmarks,
    Schedules,
    RecentSnapshots,
    ThresholdAlerts,
    DashboardCustomizationSummary,
    ExecutiveSummary,
    DataQnA,
    GenerativeAuthoring,
    DataStories,
}

impl Feature {
    pub const ALL: [Feature; 11] = [
        Feature::SharedView,
        Feature::StatePersistence,
        Feature::Bookmarks,
        Feature::Schedules,
        Feature::RecentSnapshots,
        Feature::ThresholdAlerts,
        Feature::DashboardCustomizationSummary,
        Feature::ExecutiveSummary,
        Feature::DataQnA,
        Feature::GenerativeAuthoring,
        Feature::DataStories,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Feature::SharedView => "SharedView",
            Feature::StatePersistence => "StatePersistence",
            Feature::Bookmarks => "Bookmarks",
            Feature::Schedules => "Schedules",
            Feature::RecentSnapshots => "RecentSnapshots",
            Feature::ThresholdAlerts => "ThresholdAlerts",
            Feature::DashboardCustomizationSummary => "DashboardCustomizationSummary",
            Feature::ExecutiveSummary => "ExecutiveSummary",
            Feature::DataQnA => "DataQnA",
            Feature::GenerativeAuthoring => "GenerativeAuthoring",
            Feature::DataStories => "DataStories",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == s)
    }
}
