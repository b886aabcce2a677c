/// `GET /demo` and `GET /client/relay-client.js`: the browser client and its demo app.
import BrowserClient
import Hummingbird

/// The browser client library (`clients/js/relay-client.js`, an ES module with no build step)
/// and the demo app built on it (`clients/js/demo.html`: a user's devices with presence, a
/// session with Perfect Negotiation, the robot's video with basic stats, hang up). Both are
/// embedded in the binary at build time.
enum BrowserFiles {
    static var routes: RouteCollection<RelayRequestContext> {
        let router = RouteCollection(context: RelayRequestContext.self)
        let script = ByteBuffer(bytes: BrowserClient.script)
        let demo = ByteBuffer(bytes: BrowserClient.demoPage)
        router.get("/client/relay-client.js") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/javascript; charset=utf-8", .cacheControl: "no-cache"], body: .init(byteBuffer: script))
        }
        router.get("/demo") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"], body: .init(byteBuffer: demo))
        }
        return router
    }
}
