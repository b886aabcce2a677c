import Foundation
import HTTPTypes
import Relay
import RelayCore
import RelayTestSupport
import TURNBroker
import Testing

/// ICE servers from Cloudflare's TURN API (a local fake of it on loopback), per session and over HTTP.
@Suite(.timeLimit(.minutes(1))) struct CloudflareTURNTests {
    static func environment(_ base: String, _ extra: [String: String] = [:]) -> [String: String] {
        var environment = [
            "RELAY_TURN_PROVIDER": "cloudflare",
            "CLOUDFLARE_TURN_KEY_ID": "test-key-id",
            "CLOUDFLARE_TURN_API_TOKEN": "test-api-token",
            "CLOUDFLARE_TURN_API_BASE": base,
            // Long enough that a slow test machine never times out by accident.
            "CLOUDFLARE_TURN_TIMEOUT_MS": "3000",
        ]
        environment.merge(extra) { _, new in new }
        return environment
    }

    static func urls(_ document: [String: Any]) -> [String] {
        ((document["iceServers"] as? [[String: Any]]) ?? []).flatMap { server -> [String] in
            if let one = server["urls"] as? String { return [one] }
            return server["urls"] as? [String] ?? []
        }
    }

    @Test func sessionCredentialsComeFromCloudflareAndAreRevokedWhenItCloses() async throws {
        let fake = FakeCloudflareTURN()
        try await fake.run { base in
            try await TestRelay.run(Self.environment(base)) { relay in
                let device = try await relay.device()
                let app = try await relay.app()
                try app.send(["type": "webrtc_request", "device_id": "robot-1", "ttl": 600])
                let credentials = try await app.next("webrtc_credentials")
                let request = try await device.next("webrtc_request")
                let sessionID = try #require(credentials["session_id"] as? String)
                let document = try #require(credentials["ice_servers"] as? [String: Any])
                #expect(document["ttl"] as? Int == 600)
                #expect(request["ice_servers"] as? NSDictionary == document as NSDictionary)
                let servers = try #require(document["iceServers"] as? [[String: Any]])
                #expect(servers.last?["username"] as? String == FakeCloudflareTURN.username(mint: 1))
                #expect(servers.last?["credential"] as? String == "fake-turn-credential-1")
                // Port 53 is dropped unless asked for.
                #expect(Self.urls(document).contains("turns:turn.cloudflare.com:443?transport=tcp"))
                #expect(!Self.urls(document).contains { $0.range(of: ":53(\\?|$)", options: .regularExpression) != nil })
                #expect(Self.urls(document).contains("turns:turn.cloudflare.com:5349?transport=tcp"))

                var arrivals = fake.arrivingRequests.makeAsyncIterator()
                let mint = try #require(await arrivals.next())
                #expect(mint.path == "/turn/keys/test-key-id/credentials/generate-ice-servers")
                #expect(mint.authorization == "Bearer test-api-token")
                #expect(mint.json == ["ttl": "600", "customIdentifier": sessionID])

                try app.send(["type": "webrtc_close", "session_id": sessionID])
                _ = try await app.next("webrtc_close")
                let revoke = try #require(await arrivals.next())
                #expect(revoke.path == "/turn/keys/test-key-id/credentials/\(FakeCloudflareTURN.username(mint: 1))/revoke")
                #expect(revoke.authorization == "Bearer test-api-token")
            }
        }
    }

    @Test func port53URLsAreKeptWhenAskedFor() async throws {
        let fake = FakeCloudflareTURN()
        try await fake.run { base in
            try await TestRelay.run(Self.environment(base, ["CLOUDFLARE_TURN_KEEP_PORT_53": "1"])) { relay in
                let minted = try await relay.mintCredentials(token: relay.appToken())
                #expect(minted.status == .ok)
                #expect(Self.urls(minted.json).contains("turn:turn.cloudflare.com:53?transport=udp"))
                #expect(Self.urls(minted.json).contains("stun:stun.cloudflare.com:53"))
            }
        }
    }

    @Test func olderSingleObjectShapeIsAccepted() async throws {
        let fake = FakeCloudflareTURN()
        fake.script(.createdObjectShape)
        try await fake.run { base in
            try await TestRelay.run(Self.environment(base)) { relay in
                let minted = try await relay.mintCredentials(token: relay.appToken("carol"), body: #"{"ttl":120}"#)
                #expect(minted.status == .ok)
                let servers = try #require(minted.json["iceServers"] as? [[String: Any]])
                #expect(servers.count == 1)
                #expect(servers[0]["username"] as? String == FakeCloudflareTURN.username(mint: 1))
                #expect(minted.json["ttl"] as? Int == 120)
                #expect((minted.json["expiresAt"] as? String)?.hasSuffix("Z") == true)
                #expect(fake.requests.first?.json == ["ttl": "120", "customIdentifier": "user:carol"])
            }
        }
    }

    @Test func upstreamRefusalsBecome502WithCloudflaresReason() async throws {
        let fake = FakeCloudflareTURN()
        fake.script(.status(401), .status(403), .status(429))
        try await fake.run { base in
            try await TestRelay.run(Self.environment(base)) { relay in
                for (status, reason) in [(401, "Upstream said 401"), (403, "Upstream said 403"), (429, "Too many requests")] {
                    let minted = try await relay.mintCredentials(token: relay.appToken())
                    #expect(minted.status == .badGateway)
                    #expect(minted.json["detail"] as? String == "Cloudflare API error: HTTP \(status) (\(reason))")
                }
                // 4xx answers are not retried.
                #expect(fake.requests.count == 3)
            }
        }
    }

    @Test func wrongAPITokenIsA502NotAServerError() async throws {
        let fake = FakeCloudflareTURN(apiToken: "the-real-token")
        try await fake.run { base in
            try await TestRelay.run(Self.environment(base)) { relay in
                let minted = try await relay.mintCredentials(token: relay.appToken())
                #expect(minted.status == .badGateway)
                #expect(minted.json["detail"] as? String == "Cloudflare API error: HTTP 401 (Authentication error)")
            }
        }
    }

    @Test func serverErrorsAreRetriedOnce() async throws {
        let fake = FakeCloudflareTURN()
        fake.script(.status(500), .status(503), .status(500))
        try await fake.run { base in
            try await TestRelay.run(Self.environment(base)) { relay in
                let failed = try await relay.mintCredentials(token: relay.appToken())
                #expect(failed.status == .badGateway)
                #expect(failed.json["detail"] as? String == "Cloudflare API error: HTTP 503 (Upstream said 503)")
                #expect(fake.requests.count == 2)
                // One 500, then the retry succeeds.
                let recovered = try await relay.mintCredentials(token: relay.appToken())
                #expect(recovered.status == .ok)
                #expect(fake.requests.count == 4)
            }
        }
    }

    @Test func slowUpstreamIsA504AfterOneRetry() async throws {
        let fake = FakeCloudflareTURN()
        fake.script(.slow(.seconds(2)), .slow(.seconds(2)))
        try await fake.run { base in
            try await TestRelay.run(Self.environment(base, ["CLOUDFLARE_TURN_TIMEOUT_MS": "400"])) { relay in
                let minted = try await relay.mintCredentials(token: relay.appToken())
                #expect(minted.status == .gatewayTimeout)
                #expect(minted.json["detail"] as? String == "Cloudflare API timed out")
                // The retry was sent (the fake may read it a moment after the relay gave up on it).
                _ = try await eventually("the retry to reach the upstream") { fake.requests.count == 2 ? true : nil }
                #expect(fake.requests.count == 2)
            }
        }
    }

    @Test func droppedConnectionIsRetriedThenA502() async throws {
        let fake = FakeCloudflareTURN()
        fake.script(.drop, .drop, .drop)
        try await fake.run { base in
            try await TestRelay.run(Self.environment(base)) { relay in
                let minted = try await relay.mintCredentials(token: relay.appToken())
                #expect(minted.status == .badGateway)
                #expect((minted.json["detail"] as? String)?.hasPrefix("Cloudflare API error: ") == true)
                #expect(fake.requests.count == 2)
                // A dropped connection then a good answer: the retry hides the drop.
                let recovered = try await relay.mintCredentials(token: relay.appToken())
                #expect(recovered.status == .ok)
            }
        }
    }

    @Test func failedMintGivesTurnErrorAndNoSession() async throws {
        let fake = FakeCloudflareTURN()
        fake.script(.status(403))
        try await fake.run { base in
            try await TestRelay.run(Self.environment(base)) { relay in
                let device = try await relay.device()
                let app = try await relay.app()
                try app.send(["type": "webrtc_request", "device_id": "robot-1"])
                let error = try await app.next("error")
                #expect(error["code"] as? String == "turn_error")
                #expect(error["message"] as? String == "TURN error: Cloudflare API error: HTTP 403 (Upstream said 403)")
                try await device.expectNothingPending()
                #expect(try await relay.healthz().contains(#""sessions":0"#))
            }
        }
    }

    @Test func sessionCredentialsAreRefreshedForBothPartiesAndAllRevokedAtClose() async throws {
        let fake = FakeCloudflareTURN()
        try await fake.run { base in
            try await TestRelay.run(Self.environment(base), refreshDelay: { _ in .milliseconds(100) }) { relay in
                let device = try await relay.device()
                let app = try await relay.app()
                let (credentials, _) = try await relay.openSession(app: app, device: device)
                let sessionID = credentials["session_id"] as! String
                for socket in [app, device] {
                    let refresh = try await socket.next("ice_servers_refresh")
                    #expect(refresh["session_id"] as? String == sessionID)
                    let servers = (refresh["ice_servers"] as? [String: Any])?["iceServers"] as? [[String: Any]]
                    #expect(servers?.last?["username"] as? String == FakeCloudflareTURN.username(mint: 2))
                }
                try device.send(["type": "webrtc_close", "session_id": sessionID, "reason": "done"])
                // More refreshes may come first (every 100 ms here).
                while try await device.next()["type"] as? String != "webrtc_close" {}
                var revoked: Set<String> = []
                var arrivals = fake.arrivingRequests.makeAsyncIterator()
                let first = "/turn/keys/test-key-id/credentials/\(FakeCloudflareTURN.username(mint: 1))/revoke"
                let second = "/turn/keys/test-key-id/credentials/\(FakeCloudflareTURN.username(mint: 2))/revoke"
                // Every credential the call may still use is revoked, the first and the refreshed ones.
                while !revoked.isSuperset(of: [first, second]), let request = await arrivals.next() {
                    if request.path.hasSuffix("/revoke") { revoked.insert(request.path) }
                }
                #expect(revoked.isSuperset(of: [first, second]))
            }
        }
    }
}

extension CloudflareTURNTests {
    @Test func apiTokenAndMintedCredentialsNeverReachTheLog() async throws {
        let fake = FakeCloudflareTURN()
        fake.script(.created, .status(500))
        let logs = LogCapture()
        try await fake.run { base in
            try await TestRelay.run(Self.environment(base), logs: logs) { relay in
                let device = try await relay.device()
                let app = try await relay.app()
                let (credentials, _) = try await relay.openSession(app: app, device: device)
                try app.send(["type": "webrtc_close", "session_id": credentials["session_id"] as! String])
                _ = try await app.next("webrtc_close")
                // The revocation is refused (500), which the relay logs with the status only.
                var arrivals = fake.arrivingRequests.makeAsyncIterator()
                while let request = await arrivals.next(), !request.path.hasSuffix("/revoke") {}
                fake.script(.status(403))
                #expect(try await relay.mintCredentials(token: relay.appToken()).status == .badGateway)
            }
        }
        let lines = logs.all
        #expect(lines.contains { $0.contains("Minting ICE servers failed") })
        for line in lines {
            #expect(!line.contains("test-api-token"), "\(line)")
            #expect(!line.contains("fake-turn-credential"), "\(line)")
        }
    }
}

/// `POST /api/turn/credentials` rules that do not depend on the provider.
@Suite(.timeLimit(.minutes(1))) struct TURNCredentialsEndpointTests {
    @Test func staticProviderGivesSTUNOnlyWithTheDefaultTTL() async throws {
        try await TestRelay.run { relay in
            let minted = try await relay.mintCredentials(token: relay.appToken())
            #expect(minted.status == .ok)
            #expect(minted.json["ttl"] as? Int == 3600)
            let servers = try #require(minted.json["iceServers"] as? [[String: Any]])
            #expect(servers.count == 1 && servers[0]["username"] == nil)
            #expect(minted.headers[.cacheControl] == "no-store")
        }
    }

    @Test func badTokenIs401() async throws {
        try await TestRelay.run { relay in
            #expect(try await relay.mintCredentials(token: nil).status == .unauthorized)
            let expired = try await relay.mintCredentials(token: relay.appToken(lifetime: -120))
            #expect(expired.status == .unauthorized)
            #expect(expired.json["detail"] as? String == "App token has expired")
        }
    }

    @Test func ttlOutsideTheRangeIs400() async throws {
        try await TestRelay.run { relay in
            for body in [#"{"ttl":59}"#, #"{"ttl":172801}"#, #"{"ttl":"3600"}"#, #"{"ttl":60.5}"#] {
                let minted = try await relay.mintCredentials(token: relay.appToken(), body: body)
                #expect(minted.status == .badRequest, "\(body)")
                #expect(minted.json["detail"] as? String == "ttl must be an integer from 60 to 172800")
            }
            let notJSON = try await relay.mintCredentials(token: relay.appToken(), body: "ttl=3600")
            #expect(notJSON.status == .badRequest)
            for body in [#"{"ttl":60}"#, #"{"ttl":172800}"#, "{}"] {
                #expect(try await relay.mintCredentials(token: relay.appToken(), body: body).status == .ok, "\(body)")
            }
        }
    }

    @Test func eachUserIsLimitedPerMinute() async throws {
        try await TestRelay.run(["RELAY_TURN_RATE_PER_MIN": "3"]) { relay in
            for _ in 0..<3 {
                #expect(try await relay.mintCredentials(token: relay.appToken("dave")).status == .ok)
            }
            let limited = try await relay.mintCredentials(token: relay.appToken("dave"))
            #expect(limited.status == .tooManyRequests)
            let retryAfter = try #require(limited.headers[.retryAfter].flatMap { Int($0) })
            #expect((1...20).contains(retryAfter))
            // Another user is not affected.
            #expect(try await relay.mintCredentials(token: relay.appToken("erin")).status == .ok)
        }
    }
}

@Suite struct CredentialDocumentTests {
    @Test func expiresAtIsUTCWithWholeSeconds() {
        let document = CredentialDocument(iceServers: [], ttl: 3600, issuedAt: Date(timeIntervalSince1970: 1_795_291_274.75))
        #expect(document.expiresAt == "2026-11-21T21:01:14Z")
        #expect(CredentialDocument(iceServers: [], ttl: 60, issuedAt: Date(timeIntervalSince1970: 0)).expiresAt == "1970-01-01T00:01:00Z")
        #expect(!document.hasExpired(at: Date(timeIntervalSince1970: 1_795_294_873)))
        #expect(document.hasExpired(at: Date(timeIntervalSince1970: 1_795_294_875)))
    }

    @Test func aSessionMayAskForEveryTtlTheProvidersMintAndNoOther() {
        // The message rules (RelayCore) and the providers (TURNBroker) keep one range each.
        #expect(MessageLimits.ttlRange == TURNLimits.ttlRange)
    }
}

/// The relay's libcurl client, on its own against a local upstream.
@Suite(.timeLimit(.minutes(1))) struct CurlClientTests {
    /// Shutdown cancels what is still waiting on an upstream: a cancelled call ends its transfer
    /// and says so, rather than holding its thread until the upstream's timeout.
    @Test func aCancelledCallAbortsItsTransferToAHangingUpstream() async throws {
        let fake = FakeCloudflareTURN()
        fake.script(.hang)
        try await fake.run { baseURL in
            var configuration = CurlClient.Configuration()
            configuration.allowPlainHTTP = true
            configuration.totalTimeoutMilliseconds = 120_000
            let client = CurlClient(configuration: configuration)
            let call = Task { () async -> CurlClient.Failure? in
                do throws(CurlClient.Failure) {
                    _ = try await client.post(url: "\(baseURL)/turn/keys/\(fake.keyID)/credentials/generate-ice-servers", headers: ["Authorization: Bearer \(fake.apiToken)"], body: [])
                    return nil
                } catch {
                    return error
                }
            }
            var arrivals = fake.arrivingRequests.makeAsyncIterator()
            _ = await arrivals.next()
            call.cancel()
            let failure = await call.value
            #expect(failure == .cancelled, "the call ended with \(String(describing: failure))")
            try await client.shutdown()
        }
    }
}
