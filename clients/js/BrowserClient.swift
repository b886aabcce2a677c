/// The browser client library and the demo page built on it, as the relay serves them
/// (`/client/relay-client.js`, `/demo`): the files beside this one, embedded at build time.

/// The files of `clients/js`, embedded in the relay.
public enum BrowserClient {
    /// `relay-client.js`: the ES module.
    public static var script: [UInt8] { PackageResources.relay_client_js }
    /// `demo.html`: the demo app on it.
    public static var demoPage: [UInt8] { PackageResources.demo_html }
}
