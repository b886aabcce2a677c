/// ICE servers from Cloudflare's TURN API (through libcurl), with revocation.
import Foundation
import Logging
import Metrics

/// Cloudflare Realtime TURN: `POST {base}/turn/keys/{key id}/credentials/generate-ice-servers`
/// through libcurl, and `.../credentials/{username}/revoke` when a session closes.
public struct CloudflareProvider: TURNProvider {
    public struct Configuration: Sendable {
        /// `CLOUDFLARE_TURN_KEY_ID`
        public var keyID: String
        /// `CLOUDFLARE_TURN_API_TOKEN` (a secret: never logged)
        public var apiToken: String
        /// `CLOUDFLARE_TURN_API_BASE`
        public var baseURL: String
        /// `CLOUDFLARE_TURN_KEEP_PORT_53`: keep URLs on port 53, which many networks block or mangle.
        public var keepPort53: Bool

        public init(keyID: String, apiToken: String, baseURL: String = "https://rtc.live.cloudflare.com/v1", keepPort53: Bool = false) {
            self.keyID = keyID
            self.apiToken = apiToken
            self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
            self.keepPort53 = keepPort53
        }
    }

    public let configuration: Configuration
    let client: CurlClient
    let logger: Logger
    /// Pause before the one retry: 100-300 ms, so many relays do not retry in step.
    let retryJitter: ClosedRange<Int>
    private let revokeFailures: Counter

    /// `metrics` receives `relay_turn_revocations_failed_total` (mints are counted by the caller).
    public init(
        configuration: Configuration,
        client: CurlClient,
        logger: Logger,
        metrics: any MetricsFactory = MetricsSystem.factory,
        retryJitterMilliseconds: ClosedRange<Int> = 100...300
    ) {
        self.revokeFailures = Counter(label: "relay_turn_revocations_failed_total", dimensions: [("provider", "cloudflare")], factory: metrics)
        self.configuration = configuration
        self.client = client
        self.logger = logger
        self.retryJitter = retryJitterMilliseconds
    }

    public var name: String { "cloudflare" }

    private var keyURL: String {
        "\(configuration.baseURL)/turn/keys/\(Self.pathSegment(configuration.keyID))/credentials"
    }

    private var headers: [String] {
        ["Authorization: Bearer \(configuration.apiToken)", "Content-Type: application/json", "Accept: application/json"]
    }

    public func mint(ttl: Int, identifier: String) async throws(TURNError) -> CredentialDocument {
        var body = "{\"ttl\":\(ttl),\"customIdentifier\":"
        body += Self.jsonString(identifier)
        body += "}"
        let issuedAt = Date()
        let response = try await postWithOneRetry(url: "\(keyURL)/generate-ice-servers", body: Array(body.utf8))
        guard (200..<300).contains(response.status) else {
            logger.warning("Cloudflare TURN API refused to mint", metadata: ["http.status": "\(response.status)"])
            throw TURNError(
                .upstreamFailed,
                "Cloudflare API error: HTTP \(response.status)\(Self.errorMessage(in: response.body).map { " (\($0))" } ?? "")"
            )
        }
        guard let servers = Self.parseICEServers(response.body) else {
            throw TURNError(.upstreamFailed, "Cloudflare API error: unexpected response body")
        }
        let kept = configuration.keepPort53 ? servers : servers.compactMap(Self.droppingPort53)
        return CredentialDocument(iceServers: kept, ttl: ttl, issuedAt: issuedAt)
    }

    public func revoke(_ document: CredentialDocument) async {
        let usernames = Set(document.iceServers.compactMap(\.username))
        for username in usernames {
            do {
                let response = try await client.post(url: "\(keyURL)/\(Self.pathSegment(username))/revoke", headers: headers, body: [])
                guard (200..<300).contains(response.status) else {
                    revokeFailures.increment()
                    logger.warning("Cloudflare TURN credential revocation refused", metadata: ["http.status": "\(response.status)"])
                    continue
                }
            } catch {
                revokeFailures.increment()
                logger.warning("Cloudflare TURN credential revocation failed", metadata: ["error": "\(error)"])
            }
        }
    }

    /// One retry, after a short random pause, on a timeout, a dropped connection or a 5xx.
    private func postWithOneRetry(url: String, body: [UInt8]) async throws(TURNError) -> CurlClient.Response {
        var attempt = 0
        while true {
            attempt += 1
            let failure: TURNError
            do {
                let response = try await client.post(url: url, headers: headers, body: body)
                guard (500..<600).contains(response.status) else { return response }
                failure = TURNError(.upstreamFailed, "Cloudflare API error: HTTP \(response.status)")
                if attempt == 2 { return response }
            } catch {
                switch error {
                case .timedOut: failure = TURNError(.upstreamTimedOut, "Cloudflare API timed out")
                case .overloaded: throw TURNError(.upstreamFailed, "Cloudflare API error: too many requests in flight")
                case .cancelled: throw TURNError(.upstreamFailed, "Cloudflare API call cancelled")
                case .transport(let detail): failure = TURNError(.upstreamFailed, "Cloudflare API error: \(detail)")
                }
            }
            guard attempt < 2 else { throw failure }
            logger.info("Retrying Cloudflare TURN API", metadata: ["error": "\(failure.detail)"])
            try? await Task.sleep(for: .milliseconds(Int.random(in: retryJitter)))
        }
    }

    /// `iceServers` as an array, or (older endpoint) a single object.
    static func parseICEServers(_ body: [UInt8]) -> [ICEServer]? {
        struct Many: Decodable { var iceServers: [ICEServer] }
        struct One: Decodable { var iceServers: ICEServer }
        let decoder = JSONDecoder()
        if let many = try? decoder.decode(Many.self, from: Data(body)) { return many.iceServers }
        if let one = try? decoder.decode(One.self, from: Data(body)) { return [one.iceServers] }
        return nil
    }

    /// The server without its port-53 URLs, or nil when none are left.
    static func droppingPort53(_ server: ICEServer) -> ICEServer? {
        var server = server
        switch server.urls {
        case .one(let url):
            if port(of: url) == 53 { return nil }
        case .many(let urls):
            let kept = urls.filter { port(of: $0) != 53 }
            if kept.isEmpty { return nil }
            server.urls = .many(kept)
        }
        return server
    }

    /// The port of a `stun:`/`turn:`/`turns:` URI (`turn:host:port?transport=udp`, IPv6 in brackets).
    static func port(of uri: String) -> Int? {
        var rest = Substring(uri)
        if let colon = rest.firstIndex(of: ":") { rest = rest[rest.index(after: colon)...] }
        if let query = rest.firstIndex(of: "?") { rest = rest[..<query] }
        if let bracket = rest.lastIndex(of: "]") { rest = rest[rest.index(after: bracket)...] }
        guard let colon = rest.lastIndex(of: ":") else { return nil }
        return Int(rest[rest.index(after: colon)...])
    }

    static func errorMessage(in body: [UInt8]) -> String? {
        struct Envelope: Decodable {
            struct Message: Decodable { var message: String? }
            var errors: [Message]?
        }
        guard let message = (try? JSONDecoder().decode(Envelope.self, from: Data(body)))?.errors?.first?.message else { return nil }
        return String(message.prefix(200))
    }

    static func jsonString(_ value: String) -> String {
        let data = (try? JSONEncoder().encode(value)) ?? Data("\"\"".utf8)
        return String(decoding: data, as: UTF8.self)
    }

    static func pathSegment(_ value: String) -> String {
        value.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed.subtracting(CharacterSet(charactersIn: "/?#"))) ?? value
    }
}
