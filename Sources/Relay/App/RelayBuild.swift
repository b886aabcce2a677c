/// Which relay this is: its version and the git revision it was built from.

/// The relay's version (CHANGELOG.md) and build revision, as `relay --version`, the start-up
/// log line, `/healthz` and the `relay_build_info` metric show them.
public enum RelayBuild {
    public static let version = "1.1.0"
    /// The short commit id, `-dirty` when built with uncommitted changes, `unknown` outside git.
    public static let revision = buildRevision

    /// `1.1.0 (3f2a9c1d0b7e)`.
    public static var description: String { "\(version) (\(revision))" }
}
