# Copyright (c) 2026, the asyncjobs authors
#
# asyncjobs.report_html() draws in a real browser.  Real jobs run through
# the workers (some succeed, some fail, one operation with a hostile name
# whose errors carry HTML); the day's report is written to a file and
# opened in headless Chromium with a checking script added at the end of
# the page.  That script measures every chart's SVG (getBBox: a chart that
# does not lay out has an empty box), counts its bars and points, reads
# each bar's value and drawn size, and looks for anything the hostile
# names could have injected; it writes what it found as JSON into the
# DOM, which --dump-dom prints.  A screenshot must come out as a PNG.
#
# Chromium comes from Debian's packages (test/run installs it).  Without
# it the test is skipped, unless CI is set: then it fails.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::RealBin/../perl";

use AsyncJobsNode;
use File::Spec;
use IPC::Run ();
use JSON::PP ();
use PostgreSQL::Test::Utils;
use Test::More;

my $chromium;
FIND: for my $name (qw(chromium chromium-browser google-chrome))
{
	for my $d (File::Spec->path)
	{
		if (-x "$d/$name")
		{
			$chromium = "$d/$name";
			last FIND;
		}
	}
}

if (!$chromium)
{
	if (defined $ENV{CI} && $ENV{CI} ne '')
	{
		fail('chromium is installed (CI is set: the report must be checked in a browser)');
		done_testing();
		exit;
	}
	plan skip_all => 'chromium is not installed (apt-get install chromium)';
}
note "browser: $chromium";

my $node = AsyncJobsNode->new_node('report', max_workers => 2);

# --- real jobs ------------------------------------------------------------
# rep_ok: 20 succeed; rep_mixed: 10, the odd ones fail; the hostile
# operation: 4, all fail with a message that carries an <img onerror>.
my $hostile = q{rep_<script>document.title="pwned"</script>};
(my $hostile_sql = $hostile) =~ s/'/''/g;
$node->safe_psql(
	'postgres', qq{
	CREATE FUNCTION rep_work(data jsonb) RETURNS void LANGUAGE plpgsql AS \$\$
	BEGIN
		PERFORM pg_sleep((data->>'ms')::float8 / 1000);
		IF (data->>'fail')::boolean THEN
			RAISE EXCEPTION 'card % declined <img src=x onerror="document.title=''pwned''">',
				data->>'n';
		END IF;
	END \$\$;
	SELECT asyncjobs.register_operation('rep_ok', 'rep_work(jsonb)', max_retries => 0);
	SELECT asyncjobs.register_operation('rep_mixed', 'rep_work(jsonb)', max_retries => 0);
	SELECT asyncjobs.register_operation('$hostile_sql', 'rep_work(jsonb)', max_retries => 0);
	SELECT count(asyncjobs.enqueue('rep_ok', jsonb_build_object('ms', 5 + g % 20, 'n', g)))
	  FROM generate_series(1, 20) g;
	SELECT count(asyncjobs.enqueue('rep_mixed',
	                               jsonb_build_object('ms', 30, 'n', g, 'fail', g % 2 = 1)))
	  FROM generate_series(1, 10) g;
	SELECT count(asyncjobs.enqueue('$hostile_sql',
	                               jsonb_build_object('ms', 1, 'n', g, 'fail', true)))
	  FROM generate_series(1, 4) g;
});
ok( $node->wait_for_jobs(
		'postgres', q{messagename LIKE 'rep\_%'}, 60),
	'the 34 jobs completed');
is( $node->safe_psql(
		'postgres',
		q{SELECT string_agg(messagename || ' ' || statuscode || ' ' || n, ', '
		                    ORDER BY messagename COLLATE "C", statuscode)
		    FROM (SELECT messagename, statuscode, count(*) AS n
		            FROM asyncjobs.asyncoperation WHERE messagename LIKE 'rep\_%'
		           GROUP BY 1, 2) s}),
	"$hostile 31 4, rep_mixed 30 5, rep_mixed 31 5, rep_ok 30 20",
	'outcomes as planned');

# the metrics of the same jobs
my $metrics = $node->safe_psql('postgres', 'SELECT asyncjobs.metrics()');
like(
	$metrics,
	qr/^asyncjobs_jobs_completed_total\{database="postgres",operation="rep_ok",status="succeeded"\} 20$/m,
	'metrics: rep_ok succeeded 20');
like(
	$metrics,
	qr/^asyncjobs_jobs_completed_total\{database="postgres",operation="rep_<script>document.title=\\"pwned\\"<\/script>",status="failed"\} 4$/m,
	'metrics: the hostile name, its double quotes escaped');
like(
	$metrics,
	qr/^asyncjobs_job_failure_ratio\{database="postgres",operation="rep_mixed"\} 0\.5$/m,
	'metrics: rep_mixed fails half of the time');

# --- the page -------------------------------------------------------------
my $dir = PostgreSQL::Test::Utils::tempdir('report');
my $page = $node->safe_psql('postgres', q{SELECT asyncjobs.report_html('1 day')});
like($page, qr/\A<!DOCTYPE html>/, 'report_html returns an HTML page');
unlike($page, qr/<script|<img/i, 'no script or image in the page itself');
unlike($page, qr/https?:/i, 'nothing to fetch from elsewhere');

# the checking script, added at the end of a copy of the page
my $check = <<'JS';
<script>
(function () {
  var out = {
    title: document.title,
    scripts: document.scripts.length,
    injected: document.querySelectorAll('img, iframe, object, embed').length,
    charts: {},
    clusters: []
  };
  document.querySelectorAll('svg.chart').forEach(function (svg) {
    var bb = svg.getBBox(), rect = svg.getBoundingClientRect();
    var c = {
      bbox: [bb.width, bb.height], shown: [rect.width, rect.height],
      bins: svg.dataset.bins ? +svg.dataset.bins : null,
      bars: [], lines: {}, points: {}
    };
    svg.querySelectorAll('rect.bar').forEach(function (b) {
      var x = b.getBBox();
      c.bars.push({ cls: b.getAttribute('class'), value: +b.dataset.value,
                    w: x.width, h: x.height });
    });
    svg.querySelectorAll('polyline.line').forEach(function (p) {
      var x = p.getBBox();
      c.lines[p.dataset.series] = { n: p.points.numberOfItems, w: x.width };
    });
    svg.querySelectorAll('circle.pt').forEach(function (p) {
      var s = p.getAttribute('class').split(' ')[1];
      c.points[s] = (c.points[s] || 0) + 1;
    });
    out.charts[svg.dataset.chart] = c;
  });
  document.querySelectorAll('#failure-clusters tbody tr').forEach(function (tr) {
    out.clusters.push(Array.prototype.map.call(tr.cells, function (td) { return td.textContent; }));
  });
  var marker = document.createElement('pre');
  marker.id = 'render-check';
  marker.textContent = JSON.stringify(out);
  document.body.appendChild(marker);
})();
</script>
JS
(my $checked = $page) =~ s{</body>}{$check</body>};
my $file = "$dir/report.html";
open(my $fh, '>:raw', $file) or die "cannot write $file: $!";
print $fh $checked;
close $fh;

sub chromium
{
	my (@args) = @_;
	my ($stdout, $stderr) = ('', '');
	my @cmd = (
		$chromium, '--headless', '--no-sandbox', '--disable-gpu',
		'--disable-dev-shm-usage', '--no-first-run', '--hide-scrollbars',
		"--user-data-dir=$dir/profile", @args, "file://$file");
	my $ok = eval {
		IPC::Run::run(\@cmd, '<', \undef, '>', \$stdout, '2>', \$stderr,
			IPC::Run::timeout(90));
	};
	diag("chromium failed: " . ($@ || $?) . "\n$stderr") unless $ok;
	return $stdout;
}

my $dom = chromium('--dump-dom');
my ($json) = $dom =~ m{<pre id="render-check">(.*?)</pre>}s;
ok(defined $json, 'the checking script ran in the browser')
  or BAIL_OUT("no render-check marker in the DOM:\n" . substr($dom, 0, 2000));
$json =~ s/&lt;/</g;
$json =~ s/&gt;/>/g;
$json =~ s/&quot;/"/g;
$json =~ s/&#39;/'/g;
$json =~ s/&amp;/&/g;
my $r = JSON::PP->new->decode($json);
note "render check: " . JSON::PP->new->canonical->encode($r);

# nothing the hostile names carry was run or made an element
is($r->{scripts},  1, 'only the checking script is a script');
is($r->{injected}, 0, 'no injected image, frame or object');
like($r->{title}, qr/^asyncjobs report/, 'the title is untouched');

# every chart lays out
is_deeply([ sort keys %{ $r->{charts} } ],
	[qw(backlog failure-rate p95 throughput)], 'four charts');
for my $name (sort keys %{ $r->{charts} })
{
	my $c = $r->{charts}{$name};
	ok($c->{bbox}[0] > 100 && $c->{bbox}[1] > 40,
		"chart $name draws (SVG bounding box $c->{bbox}[0] x $c->{bbox}[1])");
	ok($c->{shown}[0] > 100 && $c->{shown}[1] > 40,
		"chart $name takes room on the page ($c->{shown}[0] x $c->{shown}[1])");
}

# jobs per hour by outcome: 25 hourly bins; the bars add up to the jobs,
# each is drawn, and all at one scale
my $t = $r->{charts}{throughput};
is($t->{bins}, 25, 'throughput: 25 hourly bins');
my %sum;
$sum{ $_->{cls} } += $_->{value} for @{ $t->{bars} };
is($sum{'bar ok'},     25, 'throughput: 25 succeeded');
is($sum{'bar failed'}, 9,  'throughput: 9 failed');
ok(!grep({ $_->{w} <= 0 || $_->{h} <= 0 } @{ $t->{bars} }),
	'throughput: every bar has an area');
my @scale = map { $_->{h} / $_->{value} } @{ $t->{bars} };
my ($lo, $hi) = (sort { $a <=> $b } @scale)[ 0, -1 ];
ok(@scale && $hi - $lo < 0.05 * $hi,
	'throughput: bar heights are proportional to their values');

# failure rate by operation: 0, 50 % and 100 %, drawn in proportion
my $f = $r->{charts}{'failure-rate'};
is_deeply([ map { $_->{value} } @{ $f->{bars} } ],
	[ 1, 0.5, 0 ], 'failure rate: hostile 100 %, rep_mixed 50 %, rep_ok 0 %');
ok( $f->{bars}[1]{w} > 0
	  && abs($f->{bars}[0]{w} - 2 * $f->{bars}[1]{w}) < 1
	  && $f->{bars}[2]{w} == 0,
	'failure rate: bar lengths in proportion');

# p95 by operation: three bars, each drawn
my $p = $r->{charts}{p95};
is(scalar @{ $p->{bars} }, 3, 'p95: one bar per operation');
ok(!grep({ $_->{w} <= 0 } @{ $p->{bars} }), 'p95: every bar has a length');

# backlog over time: three lines of 25 points
my $b = $r->{charts}{backlog};
is_deeply(
	{ map { $_ => $b->{lines}{$_}{n} } keys %{ $b->{lines} } },
	{ ready => 25, suspended => 25, in_progress => 25 },
	'backlog: three lines of 25 points');
is_deeply($b->{points}, { ready => 25, suspended => 25, in_progress => 25 },
	'backlog: a marker per point');
ok($b->{lines}{ready}{w} > 100, 'backlog: the lines span the chart');

# the failure clusters: the hostile message shown as text
my @hostile_rows = grep { $_->[1] eq 'P0001' && $_->[2] =~ /declined/ } @{ $r->{clusters} };
ok(@hostile_rows >= 1, 'failure clusters: the failures of the handler are listed');
is( $hostile_rows[0][2],
	q{card N declined <img src=x onerror="?">},
	'failure clusters: the message is shown as text, not as an element');
like(join(',', map { $_->[6] } @hostile_rows),
	qr/\Q$hostile\E/, 'failure clusters: the hostile operation name is shown as text');

# a screenshot comes out as a PNG of some substance
chromium('--screenshot=' . "$dir/report.png", '--window-size=1100,2400');
ok(-s "$dir/report.png", 'a screenshot was taken');
open(my $png, '<:raw', "$dir/report.png");
my $magic = '';
read($png, $magic, 8) if $png;
is($magic, "\x89PNG\r\n\x1a\n", 'the screenshot is a PNG');
ok((-s "$dir/report.png" // 0) > 20_000, 'the screenshot is not blank');

done_testing();
