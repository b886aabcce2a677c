/// Writes the git revision the relay is built from into a Swift file, before every build.
import Foundation
import PackagePlugin

/// A prebuild command: `buildRevision` = the short commit id (with `-dirty` when tracked files
/// changed), or `unknown` outside a git checkout. The file is rewritten only when it changes, so
/// an unchanged revision recompiles nothing.
@main
struct BuildRevision: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let output = context.pluginWorkDirectoryURL.appending(path: "generated")
        let file = output.appending(path: "BuildRevision.swift").path
        let package = context.package.directoryURL.path
        let script = """
            mkdir -p '\(output.path)'
            revision=$(git -C '\(package)' rev-parse --short=12 HEAD 2>/dev/null) || revision=unknown
            if [ "$revision" != unknown ] && [ -n "$(git -C '\(package)' status --porcelain --untracked-files=no 2>/dev/null)" ]; then
              revision="$revision-dirty"
            fi
            text="/// Written at build time by the BuildRevision plugin.
            let buildRevision = \\"$revision\\""
            [ "$(cat '\(file)' 2>/dev/null)" = "$text" ] || printf '%s\\n' "$text" > '\(file)'
            """
        return [
            .prebuildCommand(
                displayName: "Git revision of the build",
                executable: URL(fileURLWithPath: "/bin/sh"),
                arguments: ["-c", script],
                outputFilesDirectory: output
            )
        ]
    }
}
