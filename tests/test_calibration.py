"""clinpaper.calibration against numbers that do not come from it: EmpiricalCalibration's published
systematic error model and calibrated interval for its Southworth replication (dabigatran against
warfarin and GI bleeding, 172 negative and synthetic positive controls, data set
`southworthReplication` of EmpiricalCalibration 3.1.4, its CI-calibration vignette), and a simulation of
the power of a Cox model's test at the minimum detectable relative risk. Also the contract that no
function changes its input. The notebook nbs/04f_calibration.ipynb holds the other checks."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.duration.hazard_regression import PHReg

from clinpaper.calibration import (EmpiricalNull, SystematicErrorModel, calibrate_ci, calibrate_p, e_value,
                                   expected_absolute_systematic_error, fit_null, fit_systematic_error_model,
                                   inject_signals, minimum_detectable_rr)

# southworthReplication: the controls' true effect (hazard ratio), estimate (log HR) and SE, in its order
SOUTHWORTH_EFFECT = [
    4, 2, 1, 1.5, 1, 4, 2, 1.5, 1, 1.5, 4, 2, 1, 4, 1.5, 2, 1.5, 2, 4, 1, 4, 1.5, 2, 1,
    2, 4, 1.5, 1, 2, 4, 1.5, 1, 2, 4, 1.5, 1, 1, 1, 2, 4, 1.5, 4, 2, 1, 1.5, 2, 1, 1.5,
    4, 2, 1, 4, 1.5, 2, 1.5, 1, 4, 2, 1.5, 1, 4, 2, 1, 1.5, 4, 1, 4, 1.5, 2, 1, 1, 1.5,
    4, 1, 2, 1, 4, 2, 1.5, 1.5, 2, 4, 1, 2, 1, 4, 1.5, 2, 1.5, 4, 1, 1.5, 2, 4, 1, 2,
    1, 4, 1.5, 1, 2, 1.5, 4, 1, 4, 1.5, 2, 1, 1, 4, 2, 1.5, 1.5, 1, 2, 4, 1.5, 1, 2, 4,
    2, 1, 4, 1.5, 2, 4, 1.5, 1, 2, 1, 1.5, 4, 1, 2, 4, 1.5, 1, 2, 1, 4, 1.5, 1, 2, 4,
    1.5, 1.5, 1, 4, 2, 4, 1, 1.5, 2, 1, 1, 2, 1.5, 4, 4, 1.5, 1, 2, 1, 1, 2, 1.5, 1, 4,
    1.5, 4, 1, 2,
]
SOUTHWORTH_LOG_RR = [
    1.14669611640891, 0.553928294241761, -0.100155081495152, 0.288802516044022,
    0.018546043407605, 1.35199699659319, 0.691890327073421, 0.427273606382804,
    -0.143483421179529, 0.265212649178457, 1.21823909147425, 0.549663329693859,
    -0.0362748257279067, 1.31017304627614, 0.369190168324462, 0.647452948501304,
    0.200020614204328, 0.481871580666899, 1.09451063283776, -0.206502109259432,
    0.860720002046762, 0.122488173622935, 0.368032565271686, -0.253088263851571,
    0.0392611572152975, 0.692491579124234, -0.234032143795727, -0.645227956707766,
    0.559233172877608, 1.19497843010807, 0.285231217388231, -0.113463309493279,
    0.901433458266615, 1.54637783375484, 0.617665503161509, 0.219982528671394,
    -0.40417993493309, -0.0510649921425276, 0.638425683232766, 1.29804918413192,
    0.356830134136214, 1.35800109764747, 0.81689745327969, 0.134541986826424,
    0.534625806628534, 0.246117233448894, -0.447029837404505, -0.0265268413452372,
    0.936419062458471, 0.488869716986776, -0.200846877679619, 1.15766744288658,
    0.200041526214694, 0.432919405317994, 0.15737969098944599, -0.244642900750985,
    1.06859965155448, 0.778463634491341, 0.499214094222079, 0.0783642004085608,
    1.37595385731207, 0.48786473599458, -0.184393767674525, 0.215023780756829,
    1.09783091040903, 0.0367922667895173, 1.41799846500009, 0.450936638525655,
    0.742517180920729, 0.0454716712396022, -0.101411255055233, 0.540356664764749,
    1.37898919318356, 0.148146161309913, 0.806387376327276, 0.195065549604467,
    1.47814500911351, 0.861618803001268, 0.598687166142229, 0.397382552112546,
    0.644211144425868, 1.18830859048879, 0.0069103095355567, 0.39579305585008,
    -0.2539015780669, 0.935745913425339, 0.137783758145134, 0.934549675421445,
    0.679877379589025, 1.46308257092323, 0.298056516286213, 0.33552009074194,
    0.599743650745333, 1.22649253939035, -0.0659207749465105, 0.803070695615416,
    0.122015874333665, 1.44248769897642, 0.527480825171251, -0.080784532956313,
    0.594203811896255, 0.316938538615504, 1.20129081914253, -0.450907194277017,
    1.28816664203364, 0.398740082920528, 0.675823963725168, -0.00371743385647638,
    0.0885487508129076, 1.30324079159872, 0.749376968492693, 0.480972683305269,
    0.207227780164082, -0.180650910467798, 0.477008639895728, 1.03121437086065,
    0.400754773923625, 0.0139501780931996, 0.662416257860443, 1.22828889627561,
    0.266659524631834, -0.422259225730673, 0.919822761999683, -0.0210224449559637,
    0.938860344851539, 1.56528009344257, 0.642948076928004, 0.245713472687249,
    0.467337903204433, -0.183076421344969, 0.206324061701146, 1.05938872546767,
    0.0891375256857588, 0.398867390448993, 1.03897138857489, 0.095065944165086,
    -0.335716942170882, 0.95779370703893, 0.271380857459323, 1.61482221704074,
    0.679080228680326, -0.263018084816342, 0.430129097879845, 1.0905683183949,
    0.139141227674535, 0.263930810700214, -0.138019289600354, 1.20662973486618,
    0.552492738397591, 1.2489504893877, -0.0694092941169859, 0.336055760342342,
    0.602323496148309, -0.43289087490504, -0.0562989622132003, 0.63684805874587,
    0.352561645823598, 1.27896976235737, 1.07929780050916, 0.270175137711614,
    -0.126122853524667, 0.529283847825827, -0.441479328915726, 0.115489291085938,
    0.677616400514456, 0.392055339720336, -0.0155305082369157, 1.32181377049259,
    0.299698441084517, 1.09924706916101, -0.109244885397029, 0.559209623896686,
]
SOUTHWORTH_SE = [
    0.0332470808595618, 0.0395997969378686, 0.0500510553796796, 0.0434461557179383,
    0.0802419408145333, 0.0532722769519151, 0.0635717682200413, 0.0693273829313538,
    0.110845764910014, 0.0949969570549713, 0.0710999223480722, 0.0862474174320482,
    0.0899838793782552, 0.0588493827487403, 0.0775121121193299, 0.0706666017152747,
    0.0539226602775212, 0.0489080488766717, 0.0408500176839898, 0.0630208350838059,
    0.0262560710111653, 0.0333649196323685, 0.0306463248840531, 0.0385869251738063,
    0.053652443421083, 0.0427436092965248, 0.0595966137856036, 0.0708312493565282,
    0.0563766183145369, 0.047020390379695, 0.0618966985582135, 0.0719396904995331,
    0.0639191643924594, 0.054467018636832, 0.0697289870814976, 0.0799492867466061,
    0.134273220169617, 0.0971296465615228, 0.0761081760930217, 0.063266755013369,
    0.0835467764736789, 0.0335065594855581, 0.0386322103492691, 0.048847489970445,
    0.0424157066944968, 0.0630081404831307, 0.0826281677699449, 0.0698376026318826,
    0.0506168762021129, 0.0718722790932183, 0.0927164944155129, 0.0591275370866055,
    0.0795091986447694, 0.0508789080637148, 0.0559676296672581, 0.0653002066722483,
    0.0419527697572667, 0.0437731765297719, 0.047667942292122, 0.0555160262440498,
    0.0373346021973088, 0.0445573050548549, 0.0570996554580829, 0.0490547480054648,
    0.0371507923707657, 0.179716422119336, 0.0670138372452511, 0.0878807484566598,
    0.0799880368143064, 0.101594142774495, 0.140356431547769, 0.0460010550438215,
    0.0363076684598647, 0.0528256914718433, 0.0422708937885605, 0.0614849257886684,
    0.0422116107755939, 0.0493393756482824, 0.0534216523164053, 0.0382294816397504,
    0.035378618631768, 0.0302645713400856, 0.0441085785670456, 0.0338227553380725,
    0.0429597953443997, 0.0286476482097869, 0.036970943799359, 0.0365863481226041,
    0.0394367418363683, 0.0319704079808021, 0.0449195127199193, 0.0537153061595306,
    0.0491378889221375, 0.0410832546682162, 0.0623552880550443, 0.0638761121095172,
    0.0803658234344858, 0.0541699129520577, 0.0695474323570065, 0.0574136283364451,
    0.0451684409199462, 0.0495712688648462, 0.0378481734851769, 0.41961932005177,
    0.0415820069420916, 0.0539717901543856, 0.0491932880736206, 0.062492005737173,
    0.0484812996161197, 0.033319685961786, 0.0387094174844257, 0.042187575319978,
    0.0387537989975594, 0.0446886745802315, 0.0353040078118306, 0.0297440201662484,
    0.0407222854149193, 0.0468825763541569, 0.0374609953856665, 0.0318879163056732,
    0.0545768996250473, 0.0713166173474462, 0.0442149086598547, 0.060712914169327,
    0.0600393197774947, 0.0515171539450299, 0.0657311256567624, 0.0752732107111134,
    0.039342046093307, 0.0499691476933074, 0.0430945222834345, 0.0328388360312853,
    0.140260074896172, 0.0520021884357831, 0.0428799709072057, 0.0581147956215443,
    0.0686555068203063, 0.0776593108618496, 0.0967809007446597, 0.0663157188384442,
    0.0844383243727736, 0.110725758546377, 0.0853456527227676, 0.0698593572029343,
    0.0947237798857051, 0.0701392372805008, 0.0816318770621231, 0.0526906314677185,
    0.0636318104021628, 0.0483474929651059, 0.0736843660484887, 0.0634922297139392,
    0.0578882412494645, 0.178094926347404, 0.0811645654721245, 0.0634701106707074,
    0.0697561454273165, 0.0531331818086295, 0.0301915287835256, 0.0390438092094869,
    0.0452530231016227, 0.0356519638583121, 0.111272862777702, 0.118392172816686,
    0.071424310243772, 0.0784387919074297, 0.0910725126890062, 0.0598890595511691,
    0.0405010156959109, 0.0316001406944788, 0.0472094236774082, 0.0370884837704052,
]
SOUTHWORTH_GI_BLEED = (-0.357523436812811, 0.0666890317722757)   # the outcome of interest

# the vignette's printed model and calibrated interval (EmpiricalCalibration's default, sd linear in |t|)
PUBLISHED_MODEL = (-0.066550795, 0.933292141, 0.187468405, 0.002979502)
PUBLISHED_INTERVAL = (-0.3117702, -0.733957, 0.1067054)


def southworth():
    return (np.array(SOUTHWORTH_LOG_RR), np.array(SOUTHWORTH_SE), np.log(SOUTHWORTH_EFFECT))


def log_likelihood(coefficients, log_rr, se, true):
    a, b, c, d = coefficients
    return stats.norm.logpdf(log_rr, a + b * true, np.sqrt((c + d * np.abs(true)) ** 2 + se ** 2)).sum()


def test_southworth_model_matches_empirical_calibration():
    log_rr, se, true = southworth()
    model = fit_systematic_error_model(log_rr, se, true)
    fitted = (model.mean_intercept, model.mean_slope, model.sd_intercept, model.sd_slope)
    np.testing.assert_allclose(fitted, PUBLISHED_MODEL, atol=1e-5)
    # R's BFGS stops a little short of the maximum; this fit is at least as likely
    assert log_likelihood(fitted, log_rr, se, true) >= log_likelihood(PUBLISHED_MODEL, log_rr, se, true)
    assert (model.n, model.n_dropped) == (172, 0)


def test_southworth_interval_matches_empirical_calibration():
    """The vignette's interval, to the tolerance of R's uniroot (its default, 1.2e-4); the limits found
    here solve their equations to 1e-9 under the published model."""
    log_rr, se, true = southworth()
    interval = calibrate_ci(fit_systematic_error_model(log_rr, se, true), *SOUTHWORTH_GI_BLEED).iloc[0]
    np.testing.assert_allclose(interval[["log_rr", "log_low", "log_high"]].to_numpy(float), PUBLISHED_INTERVAL,
                               atol=1.3e-4)
    a, b, c, d = PUBLISHED_MODEL
    published = calibrate_ci(SystematicErrorModel(a, b, c, d), *SOUTHWORTH_GI_BLEED).iloc[0, :3].to_numpy(float)
    np.testing.assert_allclose(published, PUBLISHED_INTERVAL, atol=1.3e-4)
    estimate, error = SOUTHWORTH_GI_BLEED
    standardized = (estimate - (a + b * published)) / np.sqrt((c + d * np.abs(published)) ** 2 + error ** 2)
    np.testing.assert_allclose(standardized, [0, stats.norm.ppf(0.975), -stats.norm.ppf(0.975)], atol=1e-9)


def test_southworth_negative_controls_null():
    "The negative controls alone: the null, and the interval it implies (closed form)."
    log_rr, se, true = southworth()
    negative = true == 0
    null = fit_null(log_rr[negative], se[negative])
    interval = calibrate_ci(null, *SOUTHWORTH_GI_BLEED).iloc[0]
    spread = stats.norm.ppf(0.975) * np.hypot(null.sd, SOUTHWORTH_GI_BLEED[1])
    np.testing.assert_allclose(interval[["log_rr", "log_low", "log_high"]].to_numpy(float),
                               SOUTHWORTH_GI_BLEED[0] - null.mean + np.array([0, -spread, spread]), atol=1e-9)


@pytest.mark.slow
def test_power_at_the_mdrr_is_the_power_asked_for():
    """400 randomized studies (1,000 patients per arm, yearly comparator rate 5%, one year) at the hazard
    ratio whose MDRR, from the events it is expected to produce, is itself: the Cox model's two-sided
    Wald test at 0.05 detects it in about 80% of them. (Schoenfeld's variance 4/D is a little below the
    Cox model's 1/D_treated + 1/D_comparator when the arms' events differ: the power is nearer 0.78.)"""
    n, rate = 1000, 0.05
    hazard_ratio = 2.0
    for _ in range(50):   # the fixed point: the MDRR of the events expected at that hazard ratio
        expected = n * (1 - np.exp(-rate)) + n * (1 - np.exp(-rate * hazard_ratio))
        hazard_ratio = minimum_detectable_rr(n, n, round(expected))
    rng = np.random.default_rng(1983)
    treated = np.repeat([1.0, 0.0], n)
    detected = []
    for _ in range(400):
        event_time = rng.exponential(1 / (rate * np.where(treated == 1, hazard_ratio, 1.0)))
        fit = PHReg(np.minimum(event_time, 1.0), treated[:, None], status=(event_time <= 1).astype(float)).fit()
        detected.append(fit.params[0] / fit.bse[0] > stats.norm.ppf(0.975))
    assert 0.70 < np.mean(detected) < 0.87


def test_no_function_changes_its_input():
    rng = np.random.default_rng(0)
    log_rr = pd.Series(rng.normal(0.1, 0.2, 30), index=[f"outcome_{i}" for i in range(30)])
    se = rng.uniform(0.05, 0.3, 30)
    true = np.repeat(np.log([1, 2, 4]), 10)
    copies = log_rr.copy(), se.copy(), true.copy()
    null = fit_null(log_rr, se)
    calibrate_p(null, log_rr, se)
    model = fit_systematic_error_model(log_rr + true, se, true)
    calibrate_ci(model, log_rr, se)
    expected_absolute_systematic_error(null)
    assert log_rr.equals(copies[0]) and np.array_equal(se, copies[1]) and np.array_equal(true, copies[2])
    cohort = pd.DataFrame({"treated": np.repeat([1, 0], 50), "days": rng.uniform(1, 365, 100),
                           "outcome": rng.binomial(1, 0.3, 100)})
    before = cohort.copy()
    inject_signals(cohort, treatment="treated", duration="days", event="outcome", effect=2, seed=0)
    pd.testing.assert_frame_equal(cohort, before)
    assert isinstance(null, EmpiricalNull) and e_value(2.0).point > 1
