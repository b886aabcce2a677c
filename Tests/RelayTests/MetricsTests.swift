import DeviceAuth
import Foundation
import HTTPTypes
import Registry
import RelayTestSupport
import Testing

/// `/metrics` (Prometheus text) and `/readyz`.
@Suite(.timeLimit(.minutes(1))) struct MetricsTests {
    /// `name{labels} value` lines of a scrape, by series (labels sorted by name).
    static func scrape(_ relay: TestRelay) async throws -> [String: Double] {
        let (status, text) = try await relay.get("/metrics")
        #expect(status == .ok)
        var series: [String: Double] = [:]
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                Issue.record("not a sample line: \(line)")
                continue
            }
            var name = String(line[..<space])
            if let brace = name.firstIndex(of: "{") {
                let labels = name[name.index(after: brace)..<name.index(before: name.endIndex)].split(separator: ",").sorted()
                name = "\(name[..<brace]){\(labels.joined(separator: ","))}"
            }
            series[name] = value
        }
        return series
    }

    @Test func everyFamilyHasHelpAndTypeAndFollowsPrometheusNaming() async throws {
        try await TestRelay.run { relay in
            _ = try await relay.device()
            let (status, text) = try await relay.get("/metrics")
            #expect(status == .ok)
            var help: [String: String] = [:]
            var types: [String: String] = [:]
            var sampled: Set<String> = []
            for line in text.split(separator: "\n") {
                let parts = line.split(separator: " ", maxSplits: 3).map(String.init)
                if line.hasPrefix("# HELP ") { help[parts[2]] = parts.count > 3 ? parts[3] : "" }
                else if line.hasPrefix("# TYPE ") { types[parts[2]] = parts[3] }
                else { sampled.insert(String(line.prefix { $0 != "{" && $0 != " " })) }
            }
            #expect(!types.isEmpty && Set(types.keys) == Set(help.keys))
            for (family, type) in types {
                #expect(help[family]?.isEmpty == false, "no help for \(family)")
                // Counters end in _total; durations are in seconds; sizes in bytes.
                #expect((type == "counter") == family.hasSuffix("_total"), "\(family) is a \(type)")
                #expect(!family.contains("_ms") && !family.contains("millis"), "\(family) is not in base units")
            }
            for sample in sampled {
                let family = ["_bucket", "_sum", "_count"].reduce(sample) { name, suffix in
                    types[name] == nil && name.hasSuffix(suffix) ? String(name.dropLast(suffix.count)) : name
                }
                #expect(types[family] != nil, "\(sample) has no # TYPE")
            }
            // The process's own metrics, in the names every Prometheus client uses.
            let metrics = try await Self.scrape(relay)
            #expect((metrics["process_resident_memory_bytes"] ?? 0) > 1_000_000)
            #expect((metrics["process_open_fds"] ?? 0) > 3 && (metrics["process_max_fds"] ?? 0) >= (metrics["process_open_fds"] ?? 0))
            #expect((metrics["process_cpu_seconds_total"] ?? 0) > 0)
            #expect(abs((metrics["process_start_time_seconds"] ?? 0) - Date().timeIntervalSince1970) < 600)
            #expect(metrics["relay_links{kind=\"device\"}"] == 1)
        }
    }

    @Test func aMetricsTokenKeepsTheScrapeToWhoeverHasIt() async throws {
        let token = String(repeating: "m", count: 40)
        try await TestRelay.run(["RELAY_METRICS_TOKEN": token]) { relay in
            let (status, body) = try await relay.get("/metrics")
            #expect(status == .unauthorized && body.contains("RELAY_METRICS_TOKEN"))
            let (wrong, _) = try await relay.request(.get, "/metrics", token: String(repeating: "x", count: 40))
            #expect(wrong == .unauthorized)
            let (allowed, _) = try await relay.request(.get, "/metrics", token: token)
            #expect(allowed == .ok)
        }
    }

    @Test func countersMatchWhatClientsDid() async throws {
        try await TestRelay.run(["RELAY_RATE_BURST": "5", "RELAY_RATE_PER_S": "1"]) { relay in
            _ = try await relay.upgrade("/ws/app?token=\(relay.appToken(secret: "not-the-relay-secret-not-the-relay"))")
            _ = try await relay.upgrade("/ws/device?\(relay.deviceQuery(secret: "wrong-secret"))")
            let device = try await relay.device()
            let app = try await relay.app()
            let (credentials, _) = try await relay.openSession(app: app, device: device)
            let sessionID = try #require(credentials["session_id"] as? String)
            try device.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "v=0"])
            _ = try await app.next("webrtc_offer")
            try app.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "v=0"])
            _ = try await device.next("webrtc_answer")
            try app.send(["type": "webrtc_close", "session_id": sessionID])
            _ = try await device.next("webrtc_close")
            _ = try await app.next("webrtc_close")
            // The app has spent 3 of its 5: of 10 pings most are refused (a token refills each second).
            for _ in 0..<10 { try app.send(["type": "ping"]) }
            var (pongs, refused) = (0, 0)
            for _ in 0..<10 {
                let answer = try await app.next()
                if answer["type"] as? String == "pong" { pongs += 1 } else if answer["code"] as? String == "rate_limited" { refused += 1 }
            }
            #expect(pongs + refused == 10 && refused >= 5)
            device.send(raw: .text("not json"))
            #expect(try await device.next("error")["code"] as? String == "bad_request")

            let metrics = try await Self.scrape(relay)
            #expect(metrics["relay_links{kind=\"app\"}"] == 1)
            #expect(metrics["relay_links{kind=\"device\"}"] == 1)
            #expect(metrics["relay_sessions"] == 0)
            #expect(metrics["relay_sessions_started_total"] == 1)
            #expect(metrics["relay_sessions_ended_total{by=\"app\",reason=\"normal\"}"] == 1)
            #expect(metrics["relay_sessions_ended_total{by=\"relay\",reason=\"setup_timeout\"}"] == 0)
            #expect(metrics["relay_session_setup_seconds_count"] == 1)
            #expect(metrics["relay_messages_total{direction=\"in\",type=\"webrtc_request\"}"] == 1)
            #expect(metrics["relay_messages_total{direction=\"in\",type=\"webrtc_offer\"}"] == 1)
            #expect(metrics["relay_messages_total{direction=\"out\",type=\"webrtc_offer\"}"] == 1)
            #expect(metrics["relay_messages_total{direction=\"in\",type=\"webrtc_answer\"}"] == 1)
            #expect(metrics["relay_messages_total{direction=\"out\",type=\"webrtc_close\"}"] == 2)
            #expect(metrics["relay_messages_total{direction=\"in\",type=\"ping\"}"] == Double(pongs))
            #expect(metrics["relay_messages_total{direction=\"out\",type=\"pong\"}"] == Double(pongs))
            #expect(metrics["relay_messages_total{direction=\"in\",type=\"invalid\"}"] == 1)
            #expect(metrics["relay_messages_total{direction=\"out\",type=\"error\"}"] == Double(refused + 1))
            #expect(metrics["relay_rate_limited_messages_total"] == Double(refused))
            #expect(metrics["relay_auth_failures_total{reason=\"bad_signature\"}"] == 1)
            #expect(metrics["relay_auth_failures_total{reason=\"bad_device_signature\"}"] == 1)
            // Every refusal reason has its own series (one missing is counted as `other`).
            for reason in ["unsupported_type", "device_nonces_exhausted", "nonces_unavailable"] {
                #expect(metrics["relay_auth_failures_total{reason=\"\(reason)\"}"] == 0, "\(reason)")
            }
            #expect(metrics["relay_turn_mints_total{provider=\"static\"}"] == 1)
            #expect(metrics["relay_turn_mint_seconds_count{provider=\"static\"}"] == 1)
        }
    }

    @Test func readinessFollowsTheTURNProviderAndTheStore() async throws {
        let fake = FakeCloudflareTURN()
        try await fake.run { base in
            try await TestRelay.run(CloudflareTURNTests.environment(base)) { relay in
                #expect(try await relay.request(.get, "/readyz").status == .ok)
                // The upstream fails (each call and its retry): not ready, and errors are counted.
                fake.script(.status(500), .status(500), .status(500), .status(500))
                #expect(try await relay.mintCredentials(token: relay.appToken()).status == .badGateway)
                let unready = try await relay.request(.get, "/readyz")
                #expect(unready.status == .serviceUnavailable)
                #expect((unready.json["problems"] as? [String])?.first?.hasPrefix("turn (cloudflare): Cloudflare API error: HTTP 500") == true)
                let metrics = try await Self.scrape(relay)
                // The mint and the readiness probe failed; the first readiness check's probe
                // (nothing was known yet) had worked.
                #expect(metrics["relay_turn_mint_errors_total{kind=\"failed\",provider=\"cloudflare\"}"] == 2)
                #expect(metrics["relay_turn_mints_total{provider=\"cloudflare\"}"] == 1)
                // The upstream is back: a later check probes it and is ready again.
                _ = try await eventually("ready again") { try await relay.request(.get, "/readyz").status == .ok ? true : nil }
            }
        }
    }

    @Test func readinessFailsWhileTheStoreIsUnusable() async throws {
        try await withTemporaryDirectory { directory in
            try await TestRelay.run(["RELAY_DB": "\(directory)/relay.sqlite"]) { relay in
                #expect(try await relay.request(.get, "/readyz").status == .ok)
                // The file is replaced by something that is not a database.
                for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: "\(directory)/relay.sqlite\(suffix)") }
                try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: "\(directory)/relay.sqlite"))
                let unready = try await relay.request(.get, "/readyz")
                #expect(unready.status == .serviceUnavailable)
                #expect((unready.json["problems"] as? [String])?.first?.hasPrefix("store:") == true)
            }
        }
    }
}
