/// The standard `process_*` metrics of a Prometheus client, read from `/proc` at each scrape.
#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// CPU time, memory, open files and start time of this process, in the names and units every
/// Prometheus client library uses (so existing dashboards and alerts apply). Linux only: on
/// other systems the scrape has none of them.
enum ProcessMetrics {
    /// The families as Prometheus text, each with `# HELP` and `# TYPE`.
    static func render() -> String {
        #if os(Linux)
        var text = ""
        func family(_ name: String, _ type: String, _ help: String, _ value: Double?) {
            guard let value else { return }
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        let stat = Self.stat()
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        let pageSize = Double(sysconf(Int32(_SC_PAGESIZE)))
        family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", stat.map { ($0.utime + $0.stime) / ticks })
        family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", stat.map { $0.rss * pageSize })
        family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", stat.map { $0.vsize })
        family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", stat.flatMap { Self.startTime(ticksAfterBoot: $0.starttime, ticks: ticks) })
        family("process_open_fds", "gauge", "Number of open file descriptors.", (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")).map { Double($0.count - 1) })
        var limit = rlimit()
        family("process_max_fds", "gauge", "Maximum number of open file descriptors.", getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 ? Double(limit.rlim_cur) : nil)
        return text
        #else
        return ""
        #endif
    }

    #if os(Linux)
    struct Stat {
        var utime: Double
        var stime: Double
        var starttime: Double
        var vsize: Double
        var rss: Double
    }

    /// `/proc/self/stat` (proc(5)): fields after the command name, which may hold spaces.
    static func stat() -> Stat? {
        guard let text = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8), let close = text.lastIndex(of: ")") else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ").map { Double($0) }
        // After ")": state is index 0, so field N of proc(5) is index N - 3.
        guard fields.count > 21, let utime = fields[11], let stime = fields[12], let start = fields[19], let vsize = fields[20], let rss = fields[21] else { return nil }
        return Stat(utime: utime, stime: stime, starttime: start, vsize: vsize, rss: rss)
    }

    /// Boot time (`btime` of `/proc/stat`) plus the process's start in clock ticks after boot.
    static func startTime(ticksAfterBoot: Double, ticks: Double) -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
            let line = text.split(separator: "\n").first(where: { $0.hasPrefix("btime ") }), let boot = Double(line.dropFirst(6))
        else { return nil }
        return boot + ticksAfterBoot / ticks
    }
    #endif
}
